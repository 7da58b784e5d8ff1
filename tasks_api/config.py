"""Settings: the one place that reads the environment."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import load_dotenv
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

log = logging.getLogger(__name__)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
ASYMMETRIC_ALGORITHMS = ("EdDSA", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384")
JWKS_ALGORITHMS_DEFAULT = ("EdDSA", "ES256", "RS256")
# RFC 7518 3.2: an HMAC key at least as long as the hash output.
MIN_SECRET_BYTES = 32
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which and what to set."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Typed, validated settings. Build with `Settings.from_env` or directly in tests."""

    # None selects the embedded SQLite file in the instance folder.
    database_url: URL | None = None
    database_url_unpooled: URL | None = None
    # One connection per request thread of a worker (WEB_THREADS, read by gunicorn.conf.py).
    db_pool_size: int = 4
    # A request that waits this long for a connection is a 503: well inside the 20 s a
    # request may take, with the 5 s statement_timeout (migration 0004) on top.
    db_pool_timeout: float = 5.0
    # psycopg's prepare_threshold; None turns protocol-level prepared statements off.
    db_prepare_threshold: int | None = 5
    log_level: str = "INFO"
    log_format: str = "text"
    # Bearer tokens: HS256 with a shared secret, or keys from a JWKS URL. Neither, in
    # embedded mode: a secret generated in the instance folder.
    auth_jwt_secret: str | None = field(default=None, repr=False)
    auth_jwks_url: str | None = None
    auth_jwt_algorithms: tuple[str, ...] = ("HS256",)
    auth_jwt_issuer: str | None = None
    auth_jwt_audience: str | None = None
    # Seconds between two fetches of the JWKS (a token with an unknown `kid` asks for one).
    auth_jwks_cooldown: float = 30.0
    auth_disabled: bool = False
    cors_origins: tuple[str, ...] = ()
    # Flask's SECRET_KEY: signs list cursors, so every instance must share it. None in
    # embedded mode: generated in the instance folder.
    secret_key: str | None = field(default=None, repr=False)
    # How many proxies in front may set X-Forwarded-* (Heroku, Render, Railway: 1).
    trusted_proxies: int = 0
    # The instance folder (embedded database, generated secrets); None: Flask's default,
    # `instance/` beside the package.
    instance_path: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, serving: bool = True) -> Settings:
        """Read settings from `env` (default: `.env` then the process environment).

        `serving=False` is for the `flask` command (migrations, tokens, purges): nothing is
        served, so the settings only a server needs (auth, SECRET_KEY) may be missing.
        """
        get = _reader(env)
        database_url = _database_url("DATABASE_URL", get("DATABASE_URL"))
        secret = _secret("AUTH_JWT_SECRET", get("AUTH_JWT_SECRET"))
        jwks_url = _jwks_url(get("AUTH_JWKS_URL"))
        disabled = _boolean("AUTH_DISABLED", get("AUTH_DISABLED"))
        if secret is not None and jwks_url is not None:
            raise ConfigError("AUTH_JWT_SECRET and AUTH_JWKS_URL: set one of the two, not both")
        serves_postgres = serving and database_url is not None
        if serves_postgres and secret is None and jwks_url is None and not disabled:
            raise ConfigError(
                "DATABASE_URL is set but no authentication is configured. Set AUTH_JWKS_URL "
                "(Better Auth: https://<your-site>/api/auth/jwks; Neon Auth: "
                "<NEON_AUTH_URL>/.well-known/jwks.json) or AUTH_JWT_SECRET (the secret your "
                "front end signs HS256 tokens with, such as BETTER_AUTH_SECRET); or set "
                "AUTH_DISABLED=true to serve /api to anyone."
            )
        secret_key = _secret("SECRET_KEY", get("SECRET_KEY"))
        if serves_postgres and secret_key is None:
            raise ConfigError(
                "SECRET_KEY: required when DATABASE_URL is set, the same value on every "
                "instance (it signs list cursors); generate one with: openssl rand -base64 32"
            )
        return cls(
            database_url=database_url,
            database_url_unpooled=_database_url(
                "DATABASE_URL_UNPOOLED", get("DATABASE_URL_UNPOOLED")
            ),
            db_pool_size=_integer(
                "DB_POOL_SIZE",
                get("DB_POOL_SIZE"),
                _integer("WEB_THREADS", get("WEB_THREADS"), 4, minimum=1, maximum=256),
                minimum=1,
            ),
            db_pool_timeout=_seconds("DB_POOL_TIMEOUT", get("DB_POOL_TIMEOUT"), 5.0),
            db_prepare_threshold=_prepare_threshold(get("DB_PREPARE_THRESHOLD")),
            log_level=_log_level(get("LOG_LEVEL")),
            log_format=_log_format(get("LOG_FORMAT")),
            auth_jwt_secret=secret,
            auth_jwks_url=jwks_url,
            auth_jwt_algorithms=_algorithms(get("AUTH_JWT_ALGORITHMS"), jwks=jwks_url is not None),
            auth_jwt_issuer=get("AUTH_JWT_ISSUER"),
            auth_jwt_audience=get("AUTH_JWT_AUDIENCE"),
            auth_jwks_cooldown=_seconds("AUTH_JWKS_COOLDOWN", get("AUTH_JWKS_COOLDOWN"), 30.0),
            auth_disabled=disabled,
            cors_origins=_origins(get("CORS_ORIGINS")),
            secret_key=secret_key,
            trusted_proxies=_integer("TRUSTED_PROXIES", get("TRUSTED_PROXIES"), 0, minimum=0),
            instance_path=_folder("INSTANCE_PATH", get("INSTANCE_PATH")),
        )

    @property
    def embedded(self) -> bool:
        """True when no DATABASE_URL is set and the app runs on its SQLite file."""
        return self.database_url is None

    @property
    def migration_url(self) -> URL | None:
        """The URL migrations run against: the direct one when Neon's pooler is in front."""
        return self.database_url_unpooled or self.database_url


@dataclass(frozen=True)
class ServerSettings:
    """What gunicorn.conf.py takes from the environment, as PaaS platforms set it."""

    port: int | None  # None: a laptop, 127.0.0.1:8000
    workers: int
    threads: int
    forwarded_allow_ips: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServerSettings:
        """Read `env` (default: `.env` then the process environment)."""
        get = _reader(env)
        port = get("PORT")
        return cls(
            port=None if port is None else _integer("PORT", port, 0, minimum=0, maximum=65535),
            workers=_integer("WEB_CONCURRENCY", get("WEB_CONCURRENCY"), 2, minimum=1, maximum=64),
            threads=_integer("WEB_THREADS", get("WEB_THREADS"), 4, minimum=1, maximum=256),
            forwarded_allow_ips=get("FORWARDED_ALLOW_IPS") or "127.0.0.1,::1",
        )


def _reader(env: Mapping[str, str] | None) -> Callable[[str], str | None]:
    """A setting's value from `env` (default: `.env` then the process environment);
    None when unset or blank."""
    if env is None:
        load_dotenv()
        env = os.environ
    source = env

    def get(name: str) -> str | None:
        return source.get(name, "").strip() or None

    return get


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


def _integer(
    name: str, raw: str | None, default: int, *, minimum: int, maximum: int | None = None
) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
    if maximum is not None and not minimum <= value <= maximum:
        raise ConfigError(f"{name}: expected an integer from {minimum} to {maximum}, got {value}")
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


def _folder(name: str, raw: str | None) -> str | None:
    if raw is None:
        return None
    path = Path(raw).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{name}: {raw} exists and is not a folder")
    return str(path)


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


def _secret(name: str, raw: str | None) -> str | None:
    if raw is not None and len(raw.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"{name}: expected at least {MIN_SECRET_BYTES} bytes "
            "(generate one with: openssl rand -base64 32)"
        )
    return raw


def _log_format(raw: str | None) -> str:
    value = (raw or "text").lower()
    if value not in ("text", "json"):
        raise ConfigError(f"LOG_FORMAT: expected text or json, got {raw!r}")
    return value


def _jwks_url(raw: str | None) -> str | None:
    if raw is None:
        return None
    parts = urlsplit(raw)
    loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if not parts.hostname or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
        raise ConfigError(
            "AUTH_JWKS_URL: expected an https:// URL (http:// only for localhost), such as "
            "https://example.com/api/auth/jwks"
        )
    return raw


def _algorithms(raw: str | None, *, jwks: bool) -> tuple[str, ...]:
    """Pinned by configuration, never taken from a token; only those the key source fits.

    A shared secret takes HMAC algorithms only and a key set asymmetric ones only, so a
    token cannot pass a public key off as an HMAC secret.
    """
    allowed = ASYMMETRIC_ALGORITHMS if jwks else HMAC_ALGORITHMS
    if raw is None:
        return JWKS_ALGORITHMS_DEFAULT if jwks else ("HS256",)
    names = tuple(dict.fromkeys(name.strip() for name in raw.split(",") if name.strip()))
    wrong = [name for name in names if name not in allowed]
    if not names or wrong:
        source = "AUTH_JWKS_URL" if jwks else "a shared secret"
        raise ConfigError(
            f"AUTH_JWT_ALGORITHMS: with {source}, expected some of {', '.join(allowed)}"
            + (f"; not {', '.join(wrong)}" if wrong else "")
        )
    return names


def _boolean(name: str, raw: str | None) -> bool:
    if raw is None or raw.lower() in _FALSE:
        return False
    if raw.lower() in _TRUE:
        return True
    raise ConfigError(f"{name}: expected true or false, got {raw!r}")


def _origins(raw: str | None) -> tuple[str, ...]:
    """Exact origins (scheme://host[:port]) that browsers may call /api from, or `*`."""
    origins = []
    for item in (raw or "").split(","):
        origin = item.strip().rstrip("/")
        if not origin:
            continue
        parts = urlsplit(origin)
        if origin != "*" and not (
            parts.scheme in ("http", "https") and parts.netloc and not parts.path
        ):
            raise ConfigError(
                f"CORS_ORIGINS: expected origins such as https://app.example.com, got {item!r}"
            )
        origins.append(origin)
    return tuple(origins)


def instance_secret(instance: Path, name: str) -> str:
    """A secret made once in the instance folder, readable by this user only.

    For embedded mode, where no one has set one. Safe against two gunicorn workers
    starting at once: the first file linked into place wins and both read it.
    """
    path = instance / name
    if not path.exists():
        private_folder(instance)
        draft = instance / f".{name}.{os.getpid()}"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(48))
        try:
            os.link(draft, path)
            log.warning("generated %s", path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()


def private_folder(folder: Path) -> None:
    """Make `folder` (and its parents) if missing; only this user may enter it.

    It holds the embedded database and the generated secrets: other local users must
    not read them.
    """
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)


def masked(url: URL) -> str:
    """The URL as it may appear in a log line: password hidden."""
    return url.render_as_string(hide_password=True)
