"""Settings: the one place that reads the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from dotenv import load_dotenv
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which and what to set."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Typed, validated settings. Build with `Settings.from_env` or directly in tests."""

    # None selects the embedded SQLite file in the instance folder.
    database_url: URL | None = None
    database_url_unpooled: URL | None = None
    db_pool_size: int = 5
    db_pool_timeout: float = 10.0
    # psycopg's prepare_threshold; None turns protocol-level prepared statements off.
    db_prepare_threshold: int | None = 5
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from `env` (default: `.env` then the process environment)."""
        if env is None:
            load_dotenv()
            env = os.environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        return cls(
            database_url=_database_url("DATABASE_URL", get("DATABASE_URL")),
            database_url_unpooled=_database_url(
                "DATABASE_URL_UNPOOLED", get("DATABASE_URL_UNPOOLED")
            ),
            db_pool_size=_integer("DB_POOL_SIZE", get("DB_POOL_SIZE"), 5, minimum=1),
            db_pool_timeout=_seconds("DB_POOL_TIMEOUT", get("DB_POOL_TIMEOUT"), 10.0),
            db_prepare_threshold=_prepare_threshold(get("DB_PREPARE_THRESHOLD")),
            log_level=_log_level(get("LOG_LEVEL")),
        )

    @property
    def embedded(self) -> bool:
        """True when no DATABASE_URL is set and the app runs on its SQLite file."""
        return self.database_url is None

    @property
    def migration_url(self) -> URL | None:
        """The URL migrations run against: the direct one when Neon's pooler is in front."""
        return self.database_url_unpooled or self.database_url


def _database_url(name: str, raw: str | None) -> URL | None:
    """Accept PostgreSQL URLs as Neon and PaaS platforms hand them out.

    `postgres://` and `postgresql://` both select psycopg 3; every query parameter
    (`sslmode`, `channel_binding`, ...) is kept and handed to libpq.
    """
    if raw is None:
        return None
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ConfigError(
            f"{name}: expected postgresql://user:password@host/dbname, or unset "
            "for the embedded SQLite database"
        ) from None
    if url.drivername not in ("postgres", "postgresql", "postgresql+psycopg"):
        raise ConfigError(
            f"{name}: expected a postgresql:// or postgres:// URL, got "
            f"{url.drivername}://...; unset it for the embedded SQLite database"
        )
    if not url.host and "host" not in url.query:
        raise ConfigError(f"{name}: the URL names no host")
    return url.set(drivername="postgresql+psycopg")


def _integer(name: str, raw: str | None, default: int, *, minimum: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name}: expected an integer >= {minimum}, got {value}")
    return value


def _seconds(name: str, raw: str | None, default: float) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a number of seconds, got {raw!r}") from None
    if not 0 < value <= 3600:
        raise ConfigError(f"{name}: expected seconds between 0 and 3600, got {raw}")
    return value


def _prepare_threshold(raw: str | None) -> int | None:
    if raw is None:
        return 5
    if raw.lower() == "none":
        return None
    return _integer("DB_PREPARE_THRESHOLD", raw, 5, minimum=0)


def _log_level(raw: str | None) -> str:
    level = (raw or "INFO").upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL: expected one of {', '.join(LOG_LEVELS)}, got {raw!r}")
    return level


def masked(url: URL) -> str:
    """The URL as it may appear in a log line: password hidden."""
    return url.render_as_string(hide_password=True)
