"""The `flask --app wsgi ...` commands: migrations, tokens, purges.

Each prints its result alone on stdout (so `$(flask --app wsgi token alice)` is the token)
and its progress on stderr; a failure is one line that says what to set or do, with no
traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import IO, Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from . import db, repository
from .auth import Authenticator
from .config import Settings, masked
from .models import Base
from .schemas.fields import USER_ID, USER_ID_RULE

# A token is for trying the API by hand; a longer life is a mistake, not a use.
MAX_TOKEN_LIFETIME = timedelta(days=365)
_LIFETIME = re.compile(r"(\d{1,9})([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# The table every other one is co-located with when distributed by user.
ANCHOR = "tasks"


class CLIError(click.ClickException):
    """A failure the person at the terminal can fix: shown as one `tasks_api: ...` line."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"tasks_api: {self.format_message()}", err=True)


def register(app: Flask) -> None:
    for command in (db_cli, token_command, purge_command):
        app.cli.add_command(command)
    # Its name before the purge also took tombstones; schedulers may still call it.
    app.cli.add_command(purge_command, "purge-idempotency-keys")


db_cli = AppGroup("db", help="Database migrations (Alembic).")


@db_cli.command("upgrade")
@click.argument("revision", default="head")
def upgrade_command(revision: str) -> None:
    """Migrate the database to REVISION (default: head).

    Uses DATABASE_URL_UNPOOLED when set: schema changes should not go through a
    transaction-mode pooler.
    """
    _report_move(db.upgrade, revision)
    _check_serving_url()


def _check_serving_url() -> None:
    """The release step also connects with DATABASE_URL when migrations used another URL
    (DATABASE_URL_UNPOOLED): a pooled URL the database refuses would otherwise ship,
    and the release fails here, before the web process starts, with the fix."""
    settings: Settings = current_app.extensions["tasks_api.settings"]
    url = settings.database_url
    if url is None or url == settings.migration_url:
        return
    try:
        with db.connected_once(url) as conn:
            conn.exec_driver_sql("SELECT 1")
    except DBAPIError as error:
        fix = db.refused_for_good(error)
        if fix is not None:
            raise CLIError(
                f"DATABASE_URL is refused: {db.driver_message(error)}. Fix: {fix}"
            ) from None
        click.echo(f"DATABASE_URL not reachable now: {db.driver_message(error)}", err=True)


# `-1` is an argument here, not an option.
@db_cli.command("downgrade", context_settings={"ignore_unknown_options": True})
@click.argument("revision")
def downgrade_command(revision: str) -> None:
    """Revert the database to REVISION: -1 for one step back, or base for empty."""
    _report_move(db.downgrade, revision)


@db_cli.command("distribute")
def distribute_command() -> None:
    """Print the SQL that distributes every table by user on Citus (docs/distributed.md).

    Made from the models: each table is distributed by the first column of its primary
    key, user_id, and co-located with tasks, so a user's rows are on one shard.
    """
    click.echo(distribution_sql())


def distribution_sql() -> str:
    tables = sorted(Base.metadata.tables.values(), key=lambda t: (t.name != ANCHOR, t.name))
    lines = [
        "-- Made by `flask --app wsgi db distribute` from the models: run on the Citus",
        "-- coordinator once, after `flask --app wsgi db upgrade`. alembic_version stays there.",
        "CREATE EXTENSION IF NOT EXISTS citus;",
    ]
    for table in tables:
        column = next(iter(table.primary_key.columns)).name
        colocated = "" if table.name == ANCHOR else f", colocate_with => '{ANCHOR}'"
        lines.append(f"SELECT create_distributed_table('{table.name}', '{column}'{colocated});")
    return "\n".join(lines)


@db_cli.command("revision")
@click.option("-m", "--message", required=True, help="What the migration does.")
def revision_command(message: str) -> None:
    """Write the next migration (NNNN_slug.py) from what the models add to the database."""
    url = _migration_url()
    with _database_errors(url):
        path = db.write_revision(url, message)
    click.echo(path)


def _report_move(
    migrate: Callable[[URL, str], tuple[str | None, str | None]], revision: str
) -> None:
    url = _migration_url()
    with _database_errors(url):
        before, after = migrate(url, revision)
    if before == after:
        click.echo(f"database already at revision {after or '(none)'}")
    else:
        click.echo(f"database migrated from revision {before or '(none)'} to {after or '(none)'}")


def _migration_url() -> URL:
    settings: Settings = current_app.extensions["tasks_api.settings"]
    url = settings.migration_url or db.sqlite_url(current_app.instance_path)
    click.echo(f"database: {masked(url)}", err=True)
    return url


@contextmanager
def _database_errors(url: URL) -> Iterator[None]:
    """A database or migration failure as one line: the driver's own words, no traceback."""
    from alembic.util import CommandError

    try:
        yield
    except CommandError as error:
        hint = f" Run `{db.UPGRADE_COMMAND}` first." if "not up to date" in str(error) else ""
        raise CLIError(f"{error}{hint}") from None
    except DBAPIError as error:
        raise CLIError(
            f"the database at {masked(url)} failed: {db.driver_message(error)} "
            "(check DATABASE_URL_UNPOOLED, or DATABASE_URL when that is unset)"
        ) from None


def _lifetime(_ctx: click.Context, _param: click.Parameter, value: str) -> timedelta:
    match = _LIFETIME.fullmatch(value.strip())
    lifetime = timedelta(seconds=int(match[1]) * _UNITS[match[2]]) if match else None
    if lifetime is None or not timedelta(0) < lifetime <= MAX_TOKEN_LIFETIME:
        raise CLIError(
            f"--expires-in: expected a duration up to {MAX_TOKEN_LIFETIME.days}d, "
            f"such as 3600, 90m, 12h or 7d; got {value!r}"
        )
    return lifetime


@click.command("token")
@with_appcontext
@click.argument("user_id")
@click.option(
    "--expires-in",
    default="1h",
    show_default=True,
    callback=_lifetime,
    help="Lifetime: seconds, or with s, m, h or d (at most 365d).",
)
def token_command(user_id: str, expires_in: timedelta) -> None:
    """Print a bearer token for USER_ID, signed with this app's secret."""
    if not USER_ID.fullmatch(user_id):
        raise CLIError(f"USER_ID: {USER_ID_RULE}")
    settings: Settings = current_app.extensions["tasks_api.settings"]
    authenticator: Authenticator | None = current_app.extensions.get("tasks_api.auth")
    if settings.auth_disabled:
        raise CLIError("AUTH_DISABLED=true: no tokens are checked, send none.")
    if authenticator is None or authenticator.secret is None:
        raise CLIError(
            "tokens come from your auth provider when AUTH_JWKS_URL is set"
            if settings.auth_jwks_url
            else "set AUTH_JWT_SECRET (the secret your front end signs tokens with) to mint "
            "tokens for a PostgreSQL deployment"
        )
    click.echo(authenticator.issue(user_id, expires_in))


@click.command("purge")
@with_appcontext
def purge_command() -> None:
    """Delete expired records: Idempotency-Key records older than 24 hours, and the
    tombstones of tasks deleted more than 30 days ago (the sync feed's memory).

    Run it daily from the platform's scheduler. It is safe while clients sync: a sync
    token old enough to need a purged tombstone is refused (410) anyway.
    `purge-idempotency-keys` is the same command under its earlier name.
    """
    url = db.current_engine().url
    with _database_errors(url), db.current_engine().connect() as conn:
        keys = repository.keys.purge_keys(conn)
        tombstones = repository.changes.purge_tombstones(conn)
    click.echo(f"purged {keys} expired idempotency keys and {tombstones} expired tombstones")
