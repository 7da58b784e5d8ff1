"""The engine, one pooled connection per request, and migrations."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from flask import Flask
from sqlalchemy import Connection, Engine, NullPool, create_engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Select
from sqlalchemy.sql.dml import UpdateBase

from . import positions
from .config import Settings, masked, private_folder
from .context import current_application, current_globals

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_FILE = "tasks.sqlite3"
POOL_RECYCLE_SECONDS = 240
T = TypeVar("T")


def init_app(app: Flask, settings: Settings, *, serving: bool = True) -> None:
    """Create the engine; in embedded mode, create the SQLite file, and migrate it when
    serving (under the flask command, `db upgrade`/`downgrade` decide)."""
    if settings.embedded:
        private_folder(Path(app.instance_path))
        url = sqlite_url(app.instance_path)
        _private_file(Path(str(url.database)))
        engine = _sqlite_engine(url, settings)
        if serving:
            with _file_lock(Path(app.instance_path) / ".migrate.lock"):
                upgrade(url)
        log.info("database: embedded SQLite file %s", url.database)
    else:
        assert settings.database_url is not None
        engine = _postgresql_engine(settings.database_url, settings)
        log.info("database: %s", masked(settings.database_url))
    app.extensions["tasks_api.engine"] = engine
    app.teardown_appcontext(_release_connection)


def sqlite_url(instance_path: str) -> URL:
    return URL.create("sqlite+pysqlite", database=str(Path(instance_path) / SQLITE_FILE))


def _private_file(path: Path) -> None:
    """Create the SQLite file readable by this user only; SQLite gives its -wal and -shm
    files the same permissions."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))


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
        # A write's steps join the one row of its plan without a join condition
        # (tasks_api/repository/writes.py); SQLAlchemy would warn of a cartesian product.
        enable_from_linting=False,
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        # WAL lets readers run while another worker writes.
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")
        # PostgreSQL computes manual-order keys in SQL; SQLite calls Python for them.
        positions.register_sqlite(dbapi_connection)

    return engine


def current_engine() -> Engine:
    engine: Engine = current_application().extensions["tasks_api.engine"]
    return engine


def connection() -> Connection:
    """The request's connection, checked out of the pool on first use."""
    state = current_globals()
    conn: Connection | None = state.get("db_connection")
    if conn is None:
        conn = state.db_connection = current_engine().connect()
    return conn


def _release_connection(_exc: BaseException | None) -> None:
    conn: Connection | None = current_globals().pop("db_connection", None)
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

    On PostgreSQL its SQL is compiled once, with PostgreSQL's own placeholders ($1,
    $2, ...), and runs on the pooled psycopg connection itself through a RawCursor,
    which sends it as it is. SQLAlchemy's per-execution work (cache key, execution
    context, result objects) cost more than the database did: a GET by id took ~210 us
    through `Connection.execute` and ~145 us on psycopg, round trip included. And
    psycopg parses a query for its `%(name)s` placeholders on every execution once it
    is longer than its cache's 4 KiB, as a write's plan is: 1.1 ms of CPU a write.
    Errors are turned back into SQLAlchemy's, lost connections invalidated as
    SQLAlchemy would, so the rest of the app sees one kind. On SQLite (embedded mode) it
    runs through SQLAlchemy, whose column types turn the stored text back into UUIDs and
    aware datetimes.
    """

    def __init__(self, statement: Select[Any] | UpdateBase) -> None:
        self.statement = statement
        self._sql: str | None = None
        self._constants: dict[str, Any] = {}  # values bound at build time (`version + 1`)
        self._order: Sequence[str] = ()  # the parameters' names, for $1, $2, ...
        self._names: list[str] | None = None  # of the result's columns
        self._bound: frozenset[str] | None = None  # SQLite: the parameters it binds

    def rows(self, conn: Connection, **params: Any) -> Sequence[Mapping[str, Any]]:
        if conn.dialect.name != "postgresql":
            return [*conn.execute(self.statement, self._own(conn, params)).mappings()]
        with self._cursor(conn, params) as cursor:
            return cursor.fetchall()

    def row(self, conn: Connection, **params: Any) -> Mapping[str, Any] | None:
        rows = self.rows(conn, **params)
        return rows[0] if rows else None

    def rowcount(self, conn: Connection, **params: Any) -> int:
        if conn.dialect.name != "postgresql":
            return conn.execute(self.statement, self._own(conn, params)).rowcount
        with self._cursor(conn, params) as cursor:
            return cursor.rowcount

    def _own(self, conn: Connection, params: Mapping[str, Any]) -> Mapping[str, Any]:
        """The parameters the statement binds. SQLAlchemy would take any other that
        names a column of an UPDATE as a value to set (a write's steps share one set of
        parameters, the request's `status` among them)."""
        if self._bound is None:
            self._bound = frozenset(self.statement.compile(dialect=conn.dialect).params)
        return {name: value for name, value in params.items() if name in self._bound}

    def _compiled(self, conn: Connection) -> str:
        if self._sql is None:
            dialect = copy.copy(conn.dialect)
            dialect.paramstyle, dialect.positional = "numeric_dollar", True
            compiled = self.statement.compile(dialect=dialect)
            self._constants = {
                compiled.bind_names[bind]: bind.value
                for bind in compiled.binds.values()
                if not bind.required
            }
            self._order = list(compiled.positiontup or ())
            self._sql = str(compiled)
        return self._sql

    def _values(self, params: Mapping[str, Any]) -> list[Any]:
        given = {**params, **self._constants}  # a constant is the statement's own
        return [given[name] for name in self._order]

    def _cursor(
        self, conn: Connection, params: dict[str, Any]
    ) -> psycopg.RawCursor[dict[str, Any]]:
        sql = self._compiled(conn)
        cursor = psycopg.RawCursor(_driver(conn), row_factory=self._dict_rows)
        try:
            cursor.execute(sql, self._values(params))
        except psycopg.Error as error:
            cursor.close()
            raise _translated(conn, error, sql) from error
        return cursor

    def _dict_rows(self, cursor: Any) -> Callable[[Sequence[Any]], dict[str, Any]]:
        # psycopg's dict_row, but naming the columns once rather than on every execution.
        names = self._names
        if names is None:
            names = self._names = [column.name for column in cursor.description or ()]
        return lambda values: dict(zip(names, values, strict=True))


def _driver(conn: Connection) -> psycopg.Connection[Any]:
    driver: psycopg.Connection[Any] = conn.connection.driver_connection  # type: ignore[assignment]
    return driver


def pipeline(
    conn: Connection, statements: Sequence[tuple[Query, Mapping[str, Any]]], *, answer: int
) -> Sequence[Mapping[str, Any]]:
    """PostgreSQL: run `statements` in one round trip and one transaction; return the
    rows of the one at index `answer`.

    They go out in psycopg's pipeline mode with a single Sync after the last, so the
    server runs them as one implicit transaction (on an autocommit connection, as here)
    and answers them all at once; an error in one rolls back all. READ COMMITTED takes a
    snapshot per statement: each one's is taken after the one before has finished, so it
    sees every row committed while that one waited for a lock.
    """
    driver = _driver(conn)
    cursors: list[psycopg.RawCursor[Any]] = []
    try:
        with driver.pipeline():
            for index, (query, params) in enumerate(statements):
                sql = query._compiled(conn)
                factory = query._dict_rows if index == answer else None
                cursors.append(cursor := psycopg.RawCursor(driver, row_factory=factory))  # type: ignore[arg-type]
                cursor.execute(sql, query._values(params))
        return cursors[answer].fetchall()
    except psycopg.Error as error:
        raise _translated(conn, error, statements[answer][0]._compiled(conn)) from error
    finally:
        for cursor in cursors:
            cursor.close()


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


# The revision this code needs. Migrations are numbered 0001, 0002, ... (`flask db
# revision` keeps to it), so the newest file names it without importing Alembic.
HEAD_REVISION = max(
    path.name[:4] for path in (MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py")
)
UPGRADE_COMMAND = "flask --app wsgi db upgrade"
# The database's words for a table or column this code expects but the schema lacks:
# PostgreSQL's SQLSTATEs undefined_table and undefined_column, and SQLite's messages.
_UNDEFINED = ("42P01", "42703")
_SQLITE_UNDEFINED = ("no such table", "no such column")


class SchemaBehind(Exception):
    """The database's schema is older than this code: its migrations have not run."""

    def __init__(self, revision: str | None) -> None:
        super().__init__(
            f"The database schema is at revision {revision or '(none)'} but this version of "
            f"the service needs {HEAD_REVISION}: run `{UPGRADE_COMMAND}`."
        )


def check_schema(conn: Connection) -> None:
    """Raise SchemaBehind unless the database is migrated at least to this code's revision.

    One statement, so it doubles as the readiness probe's ping. A newer revision (the code
    was rolled back, the schema was not) passes: migrations only add what old code ignores.
    """
    try:
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError as error:
        if not missing_schema(error):
            raise
        revision = None
    if revision is None or revision < HEAD_REVISION:
        raise SchemaBehind(revision)


def missing_schema(error: DBAPIError) -> bool:
    """Whether `error` says a table or column is missing (a schema behind the code)."""
    sqlstate = getattr(error.orig, "sqlstate", None)
    return sqlstate in _UNDEFINED or str(error.orig).startswith(_SQLITE_UNDEFINED)


def driver_message(error: BaseException) -> str:
    """The database driver's own words for a failure, on one line.

    libpq's connection messages name the host, port, role and database, and the reason
    (refused, TLS required, no such database), never the password. Statement text and
    bound values stay out: a `LINE n:` excerpt and what follows are dropped.
    """
    cause = getattr(error, "orig", None) or error
    lines = []
    for line in str(cause).splitlines():
        if line.startswith("LINE "):
            break
        lines.append(line.strip())
    return " ".join(line for line in lines if line) or type(cause).__name__


# libpq's (and the server's, PgBouncer's, Neon's proxy's) words for a connection refused
# for good: it fails the same way until the settings change. psycopg gives no SQLSTATE
# for a failed connection, so the words are what there is. The first match names the fix.
_REFUSED_FOR_GOOD = (
    (
        re.compile(r"SSL off|connection is insecure|requires? (SSL|TLS)", re.I),
        "the server requires TLS: add sslmode=require to the URL's query",
    ),
    (
        re.compile(r"does not support SSL|channel binding", re.I),
        "the URL asks for TLS (sslmode, channel_binding) that this server does not offer: "
        "check the host, or the URL's query for a server without TLS",
    ),
    (
        re.compile(r'database "[^"]*" does not exist|no such database', re.I),
        "the database the URL names (after its last /) does not exist: create it, or "
        "copy the URL again from the provider",
    ),
    (
        re.compile(
            r'role "[^"]*" does not exist|password authentication failed|no password '
            r"supplied|no pg_hba\.conf entry|authentication failed",
            re.I,
        ),
        "the role or password in the URL is refused: copy the URL again from the provider "
        "(Neon: the dashboard's Connect button)",
    ),
)


def refused_for_good(error: BaseException) -> str | None:
    """How to fix a connection the database refused for good (no such database, the role
    or password refused, TLS required and refused); None when it may pass (unreachable,
    overloaded, starting up)."""
    message = driver_message(error)
    return next((fix for words, fix in _REFUSED_FOR_GOOD if words.search(message)), None)


def start_check(settings: Settings) -> bool:
    """Say at start whether the database answers and its schema fits this code; False
    when it refuses the service for good (said in one ERROR line, with the fix).

    For the web process's master, once, before any worker: a platform whose release
    does not start keeps the previous one. A database that cannot be reached does not
    stop the start (/health keeps answering; requests get 503 until it is back), and a
    schema behind the code shows in the logs before the first 503 does.
    """
    if settings.database_url is None:
        return True  # the embedded file is migrated at start
    try:
        with connected_once(settings.database_url) as conn:
            check_schema(conn)
    except SchemaBehind as behind:
        log.error("%s", behind)
    except DBAPIError as error:
        fix = refused_for_good(error)
        if fix is not None:
            log.error("DATABASE_URL is refused: %s. Fix: %s", driver_message(error), fix)
            return False
        log.warning("database not reachable at start: %s", driver_message(error))
    else:
        log.info("database schema at revision %s", HEAD_REVISION)
    return True


@contextlib.contextmanager
def connected_once(url: URL) -> Iterator[Connection]:
    """One connection to `url`, outside any pool, for a check at start or release."""
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def upgrade(url: URL, revision: str = "head") -> tuple[str | None, str | None]:
    """Migrate the database at `url` up to `revision`; return its revision before and after."""
    return _migrate(url, "upgrade", revision)


def downgrade(url: URL, revision: str) -> tuple[str | None, str | None]:
    """Migrate the database at `url` down to `revision` (`-1`: one step; `base`: empty)."""
    return _migrate(url, "downgrade", revision)


def write_revision(url: URL, message: str) -> Path:
    """Write the next migration, `NNNN_slug.py`, from what the models add to the database.

    The file is passed through `ruff format` and `ruff check --fix` when ruff is
    installed (the dev group), so it meets the project's checks as written.
    """
    with _alembic(url) as (config, conn):
        from alembic import command

        config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
        script = command.revision(
            config,
            message=message,
            autogenerate=True,
            rev_id=f"{int(HEAD_REVISION) + 1:04d}",
        )
        assert script is not None and not isinstance(script, list)  # one, on a linear history
    path = Path(script.path)
    ruff = Path(sys.executable).with_name("ruff")
    if ruff.exists():  # its reports are progress: stderr
        for args in (["format"], ["check", "--fix"], ["format"]):
            subprocess.run([ruff, *args, "--quiet", path], stdout=sys.stderr, check=False)
    return path


def _migrate(url: URL, action: str, revision: str) -> tuple[str | None, str | None]:
    with _alembic(url) as (config, conn):
        from alembic import command
        from alembic.migration import MigrationContext

        before = MigrationContext.configure(conn).get_current_revision()
        getattr(command, action)(config, revision)
        after = MigrationContext.configure(conn).get_current_revision()
    return before, after


@contextlib.contextmanager
def _alembic(url: URL) -> Iterator[tuple[Any, Connection]]:
    """Alembic's configuration, bound to a connection of its own on the database at `url`."""
    # Imported here: web workers on PostgreSQL never migrate, and Alembic costs them a
    # quarter of a second and some memory at start.
    from alembic.config import Config

    # Outside the autocommit pool: DDL runs in one transaction where the database allows
    # it (PostgreSQL).
    engine = create_engine(url, poolclass=NullPool)
    # Alembic reports progress on stdout; it belongs with the rest of it, on stderr.
    try:
        with contextlib.redirect_stdout(sys.stderr), engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # The database's timeouts (migration 0004) are for requests; a migration
                # may rewrite a large table. SET LOCAL: for this transaction only.
                conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
                conn.exec_driver_sql("SET LOCAL lock_timeout = 0")
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = conn
            yield config, conn
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
    with os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o600)) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
