"""The engine, one pooled connection per request, and migrations."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
import psycopg
from flask import Flask, current_app, g
from flask.cli import AppGroup, with_appcontext
from sqlalchemy import Connection, Engine, NullPool, create_engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Select
from sqlalchemy.sql.dml import UpdateBase

from .config import Settings, masked

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_FILE = "tasks.sqlite3"
POOL_RECYCLE_SECONDS = 240
T = TypeVar("T")


def init_app(app: Flask, settings: Settings) -> None:
    """Create the engine; in embedded mode, create and migrate the SQLite file."""
    if settings.embedded:
        Path(app.instance_path).mkdir(parents=True, exist_ok=True)
        url = sqlite_url(app.instance_path)
        engine = _sqlite_engine(url, settings)
        with _file_lock(Path(app.instance_path) / ".migrate.lock"):
            upgrade(url)
        log.info("database: embedded SQLite file %s", url.database)
    else:
        assert settings.database_url is not None
        engine = _postgresql_engine(settings.database_url, settings)
        log.info("database: %s", masked(settings.database_url))
    app.extensions["tasks_api.engine"] = engine
    app.teardown_appcontext(_release_connection)
    app.cli.add_command(db_cli)
    app.cli.add_command(purge_idempotency_keys)


def sqlite_url(instance_path: str) -> URL:
    return URL.create("sqlite+pysqlite", database=str(Path(instance_path) / SQLITE_FILE))


def _postgresql_engine(url: URL, settings: Settings) -> Engine:
    connect_args: dict[str, object] = {"prepare_threshold": settings.db_prepare_threshold}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = 10
    # Autocommit: every endpoint is a single statement, so BEGIN/COMMIT would only add
    # round trips. Reads run outside any transaction; writes commit as they run.
    return create_engine(
        url,
        isolation_level="AUTOCOMMIT",
        pool_size=settings.db_pool_size,
        max_overflow=0,
        pool_timeout=settings.db_pool_timeout,
        # Replace connections before Neon's five idle minutes end them under us.
        pool_recycle=POOL_RECYCLE_SECONDS,
        connect_args=connect_args,
        # Error messages (and so logs) show statements but never users' data.
        hide_parameters=True,
    )


def _sqlite_engine(url: URL, settings: Settings) -> Engine:
    engine = create_engine(
        url,
        isolation_level="AUTOCOMMIT",
        pool_size=settings.db_pool_size,
        max_overflow=0,
        pool_timeout=settings.db_pool_timeout,
        # Wait this long for another gunicorn worker's write lock instead of failing.
        connect_args={"timeout": settings.db_pool_timeout},
        hide_parameters=True,
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        # WAL lets readers run while another worker writes.
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    return engine


def current_engine() -> Engine:
    engine: Engine = current_app.extensions["tasks_api.engine"]
    return engine


def connection() -> Connection:
    """The request's connection, checked out of the pool on first use."""
    if "db_connection" not in g:
        g.db_connection = current_engine().connect()
    conn: Connection = g.db_connection
    return conn


def _release_connection(_exc: BaseException | None) -> None:
    conn: Connection | None = g.pop("db_connection", None)
    if conn is not None:
        conn.close()


def read(query: Callable[[Connection], T]) -> T:
    """Run a read on the request's connection; if that pooled connection turns out to be
    dead (the database restarted, or Neon's compute was suspended), once more on a fresh one.

    No ping before every request: a dead connection is found on use, and SQLAlchemy then
    drops every pooled connection made before it. Writes are not repeated here: one that
    reached the database may have committed, so the client gets a 503 and retries (If-Match
    and Idempotency-Key make that safe).
    """
    try:
        return query(connection())
    except DBAPIError as error:
        if not error.connection_invalidated:
            raise
        log.info("database connection lost; retrying the read on a fresh one")
        _release_connection(None)
        return query(connection())


class Query:
    """A statement built once and run many times, with its parameters by name.

    On PostgreSQL its SQL is compiled once and runs on the pooled psycopg connection
    itself. SQLAlchemy's per-execution work (cache key, execution context, result
    objects) cost more than the database did: a GET by id took ~210 us through
    `Connection.execute` and ~145 us on psycopg, round trip included. Errors are turned
    back into SQLAlchemy's, lost connections invalidated as SQLAlchemy would, so the rest
    of the app sees one kind. On SQLite (embedded mode) it runs through SQLAlchemy, whose
    column types turn the stored text back into UUIDs and aware datetimes.
    """

    def __init__(self, statement: Select[Any] | UpdateBase) -> None:
        self.statement = statement
        self._sql: str | None = None
        self._constants: dict[str, Any] = {}  # values bound at build time (`version + 1`)
        self._names: list[str] | None = None  # of the result's columns

    def rows(self, conn: Connection, **params: Any) -> Sequence[Mapping[str, Any]]:
        if conn.dialect.name != "postgresql":
            return [*conn.execute(self.statement, params).mappings()]
        with self._cursor(conn, params) as cursor:
            return cursor.fetchall()

    def row(self, conn: Connection, **params: Any) -> Mapping[str, Any] | None:
        rows = self.rows(conn, **params)
        return rows[0] if rows else None

    def rowcount(self, conn: Connection, **params: Any) -> int:
        if conn.dialect.name != "postgresql":
            return conn.execute(self.statement, params).rowcount
        with self._cursor(conn, params) as cursor:
            return cursor.rowcount

    def _cursor(self, conn: Connection, params: dict[str, Any]) -> psycopg.Cursor[dict[str, Any]]:
        if self._sql is None:
            compiled = self.statement.compile(dialect=conn.dialect)
            self._constants = {
                compiled.bind_names[bind]: bind.value
                for bind in compiled.binds.values()
                if not bind.required
            }
            self._sql = str(compiled)
        driver: psycopg.Connection[Any] = conn.connection.driver_connection  # type: ignore[assignment]
        cursor = driver.cursor(row_factory=self._dict_rows)
        try:
            cursor.execute(self._sql, {**self._constants, **params})
        except psycopg.Error as error:
            cursor.close()
            raise _translated(conn, error, self._sql) from error
        return cursor

    def _dict_rows(self, cursor: psycopg.Cursor[Any]) -> Callable[[Sequence[Any]], dict[str, Any]]:
        # psycopg's dict_row, but naming the columns once rather than on every execution.
        names = self._names
        if names is None:
            names = self._names = [column.name for column in cursor.description or ()]
        return lambda values: dict(zip(names, values, strict=True))


def _translated(conn: Connection, error: psycopg.Error, sql: str) -> DBAPIError:
    """The error SQLAlchemy would have raised, with its handling of a lost connection:
    this connection is dropped, and so is every other pooled one made before it."""
    lost = conn.dialect.is_disconnect(error, conn.connection.driver_connection, None)  # type: ignore[arg-type]
    if lost:
        conn.invalidate(error)
        conn.engine.dispose(close=False)
    wrapped = DBAPIError.instance(
        sql,
        None,
        error,
        psycopg.Error,
        hide_parameters=True,
        connection_invalidated=lost,
        dialect=conn.dialect,
    )
    assert isinstance(wrapped, DBAPIError)  # a psycopg.Error always becomes one
    return wrapped


def ping() -> None:
    """Raise if the database does not answer."""
    read(lambda conn: conn.execute(text("SELECT 1")))


def upgrade(url: URL, revision: str = "head") -> None:
    """Run the Alembic migrations up to `revision` on the database at `url`."""
    _migrate(url, "upgrade", revision=revision)


def _migrate(url: URL, action: str, **arguments: object) -> None:
    """Run an Alembic command (upgrade, downgrade, revision) on the database at `url`."""
    # Imported here: web workers on PostgreSQL never migrate, and Alembic costs them a
    # quarter of a second and some memory at start.
    from alembic import command
    from alembic.config import Config

    # A connection of its own, outside the autocommit pool: DDL runs in one
    # transaction where the database allows it (PostgreSQL).
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = conn
            getattr(command, action)(config, **arguments)
    finally:
        engine.dispose()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise first-start migrations between gunicorn workers sharing one file."""
    try:
        import fcntl
    except ImportError:  # Windows: a single `flask run` process, no race to guard.
        yield
        return
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


db_cli = AppGroup("db", help="Database migrations (Alembic).")


def _migration_url() -> URL:
    settings: Settings = current_app.extensions["tasks_api.settings"]
    url = settings.migration_url or sqlite_url(current_app.instance_path)
    click.echo(f"database: {masked(url)}", err=True)
    return url


@db_cli.command("upgrade")
@click.argument("revision", default="head")
def upgrade_command(revision: str) -> None:
    """Migrate the database to REVISION (default: head).

    Uses DATABASE_URL_UNPOOLED when set: schema changes should not go through a
    transaction-mode pooler.
    """
    upgrade(_migration_url(), revision)


@db_cli.command("downgrade")
@click.argument("revision")
def downgrade_command(revision: str) -> None:
    """Revert the database to REVISION (e.g. -1, or base)."""
    _migrate(_migration_url(), "downgrade", revision=revision)


@db_cli.command("revision")
@click.option("-m", "--message", required=True, help="What the migration does.")
def revision_command(message: str) -> None:
    """Write a new migration from the difference between the models and the database."""
    _migrate(_migration_url(), "revision", message=message, autogenerate=True)


@click.command("purge-idempotency-keys")
@with_appcontext
def purge_idempotency_keys() -> None:
    """Delete Idempotency-Key records older than 24 hours.

    Expired keys are also reused in place when a client sends them again; this keeps
    the table small. Run it daily from the platform's scheduler.
    """
    from . import repository  # the repository sits above this module

    with current_engine().connect() as conn:
        click.echo(f"purged {repository.purge_keys(conn)} expired idempotency keys")
