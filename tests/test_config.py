"""Settings from the environment, as PaaS platforms and Neon hand them out."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import URL

from tasks_api import create_app, db
from tasks_api.config import ConfigError, Settings
from tests.support import BACKENDS, REQUIRED, SECRET, free_port

ROOT = Path(__file__).resolve().parent.parent
AUTH = REQUIRED
NEON_POOLED = (
    "postgresql://neondb_owner:npg_secret@ep-cool-darkness-123456-pooler.eu-central-1"
    ".aws.neon.tech/neondb?sslmode=require&channel_binding=require"
)


def test_defaults_select_the_embedded_database() -> None:
    settings = Settings.from_env({})

    assert settings.embedded
    assert settings.database_url is None
    assert settings.migration_url is None
    assert (settings.db_pool_size, settings.db_pool_timeout) == (4, 5.0)
    assert settings.db_prepare_threshold == 5
    assert settings.log_level == "INFO"


def test_neons_pooled_url_pasted_as_is_keeps_its_parameters() -> None:
    url = Settings.from_env({"DATABASE_URL": NEON_POOLED, **AUTH}).database_url

    assert url is not None
    assert url.drivername == "postgresql+psycopg"
    assert url.host == "ep-cool-darkness-123456-pooler.eu-central-1.aws.neon.tech"
    assert url.password == "npg_secret"
    assert dict(url.query) == {"sslmode": "require", "channel_binding": "require"}


def test_heroku_style_postgres_scheme_selects_psycopg() -> None:
    url = Settings.from_env(
        {"DATABASE_URL": "postgres://u:p@db.example.com:6543/d", **AUTH}
    ).database_url

    assert url is not None
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port, url.database) == ("db.example.com", 6543, "d")


def test_migrations_prefer_the_unpooled_url() -> None:
    direct = NEON_POOLED.replace("-pooler", "")
    settings = Settings.from_env(
        {"DATABASE_URL": NEON_POOLED, "DATABASE_URL_UNPOOLED": direct, **AUTH}
    )

    assert settings.migration_url is not None
    assert settings.migration_url.host == "ep-cool-darkness-123456.eu-central-1.aws.neon.tech"


def test_blank_values_count_as_unset() -> None:
    settings = Settings.from_env({"DATABASE_URL": "  ", "DB_POOL_SIZE": ""})

    assert settings.embedded
    assert settings.db_pool_size == 4


def test_the_pool_defaults_to_one_connection_per_request_thread() -> None:
    assert Settings.from_env({"WEB_THREADS": "8"}).db_pool_size == 8
    assert Settings.from_env({"WEB_THREADS": "8", "DB_POOL_SIZE": "3"}).db_pool_size == 3


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DATABASE_URL": "mysql://u:p@h/d"}, "DATABASE_URL: expected a postgresql://"),
        ({"DATABASE_URL": "sqlite:///tasks.db"}, "DATABASE_URL: expected a postgresql://"),
        ({"DATABASE_URL": "not a url"}, "DATABASE_URL: expected postgresql://"),
        ({"DATABASE_URL": "postgresql:///dbonly"}, "DATABASE_URL: the URL names no host"),
        ({"DATABASE_URL_UNPOOLED": "http://x"}, "DATABASE_URL_UNPOOLED: expected"),
        ({"DB_POOL_SIZE": "five"}, "DB_POOL_SIZE: expected an integer"),
        ({"DB_POOL_SIZE": "0"}, "DB_POOL_SIZE: expected an integer >= 1"),
        ({"WEB_THREADS": "many"}, "WEB_THREADS: expected an integer"),
        ({"DB_POOL_TIMEOUT": "soon"}, "DB_POOL_TIMEOUT: expected a number of seconds"),
        ({"DB_POOL_TIMEOUT": "-1"}, "DB_POOL_TIMEOUT: expected seconds between"),
        ({"DB_PREPARE_THRESHOLD": "sometimes"}, "DB_PREPARE_THRESHOLD: expected an integer"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL: expected one of"),
        ({"DATABASE_URL": "postgresql://u@h/d"}, "DATABASE_URL is set but no authentication"),
        (
            {"AUTH_JWT_SECRET": SECRET, "AUTH_JWKS_URL": "https://a.example.com/jwks"},
            "AUTH_JWT_SECRET and AUTH_JWKS_URL: set one",
        ),
        ({"AUTH_JWT_SECRET": "short"}, "AUTH_JWT_SECRET: expected at least 32 bytes"),
        ({"AUTH_JWKS_URL": "http://auth.example.com/jwks"}, "AUTH_JWKS_URL: expected an https"),
        ({"AUTH_JWKS_URL": "not a url"}, "AUTH_JWKS_URL: expected an https"),
        (
            {"AUTH_JWKS_URL": "https://a.example.com/jwks", "AUTH_JWT_ALGORITHMS": "HS256"},
            "AUTH_JWT_ALGORITHMS: with AUTH_JWKS_URL, expected some of EdDSA",
        ),
        (
            {"AUTH_JWT_SECRET": SECRET, "AUTH_JWT_ALGORITHMS": "RS256,HS256"},
            "AUTH_JWT_ALGORITHMS: with a shared secret, expected some of HS256",
        ),
        ({"AUTH_JWT_ALGORITHMS": "none"}, "AUTH_JWT_ALGORITHMS: with a shared secret"),
        ({"AUTH_DISABLED": "maybe"}, "AUTH_DISABLED: expected true or false"),
        (
            {"DATABASE_URL": "postgresql://u@h/d", "AUTH_JWT_SECRET": SECRET},
            "SECRET_KEY: required when DATABASE_URL is set",
        ),
        ({"SECRET_KEY": "short"}, "SECRET_KEY: expected at least 32 bytes"),
        ({"TRUSTED_PROXIES": "-1"}, "TRUSTED_PROXIES: expected an integer >= 0"),
        ({"AUTH_JWKS_COOLDOWN": "0"}, "AUTH_JWKS_COOLDOWN: expected seconds"),
        ({"CORS_ORIGINS": "app.example.com"}, "CORS_ORIGINS: expected origins"),
        ({"CORS_ORIGINS": "https://app.example.com/path"}, "CORS_ORIGINS: expected origins"),
    ],
)
def test_bad_settings_say_what_to_fix(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env(env)

    assert str(error.value).startswith(message)


def test_auth_settings() -> None:
    jwks = Settings.from_env(
        {
            "DATABASE_URL": NEON_POOLED,
            "AUTH_JWKS_URL": "https://app.example.com/api/auth/jwks",
            "AUTH_JWT_ISSUER": "https://app.example.com",
            "AUTH_JWT_AUDIENCE": "https://app.example.com",
            "CORS_ORIGINS": "https://app.example.com/, http://localhost:3000",
            "SECRET_KEY": REQUIRED["SECRET_KEY"],
        }
    )
    assert jwks.auth_jwt_algorithms == ("EdDSA", "ES256", "RS256")
    assert jwks.auth_jwt_issuer == jwks.auth_jwt_audience == "https://app.example.com"
    assert jwks.cors_origins == ("https://app.example.com", "http://localhost:3000")
    assert Settings.from_env(AUTH).auth_jwt_algorithms == ("HS256",)
    assert Settings.from_env({"AUTH_JWKS_URL": "http://localhost:3000/api/auth/jwks"})
    disabled = Settings.from_env(
        {"DATABASE_URL": NEON_POOLED, "AUTH_DISABLED": "true", "SECRET_KEY": "k" * 32}
    )
    assert disabled.auth_disabled
    assert SECRET not in repr(Settings.from_env(AUTH))


def test_gunicorn_refuses_to_start_without_auth_and_says_what_to_set() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTH_", "DATABASE_URL"))}
    env |= {"DATABASE_URL": "postgresql://app:pw@127.0.0.1:1/tasks", "PORT": "0"}

    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert "DATABASE_URL is set but no authentication is configured" in result.stderr
    assert "AUTH_JWKS_URL" in result.stderr and "AUTH_DISABLED=true" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_collector_is_off_only_while_the_app_loads() -> None:
    """Importing the package leaves the garbage collector as it found it; gunicorn's
    master builds the app with it off and turns it on before each fork, so workers
    collect (a worker without it would keep every reference cycle it ever made)."""
    script = (
        "import gc, runpy\n"
        "gc.disable()\n"
        "import tasks_api\n"
        "kept_off = not gc.isenabled()\n"
        "gc.enable()\n"
        "conf = runpy.run_path('gunicorn.conf.py')\n"
        "off_in_master = not gc.isenabled()\n"
        "conf['pre_fork'](None, None)\n"
        "print(kept_off, off_in_master, gc.isenabled(), gc.get_freeze_count() > 0)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "WEB_CONCURRENCY")}

    def printed(code: str) -> list[str]:
        return subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.split()

    assert printed("import gc, tasks_api; print(gc.isenabled())") == ["True"]
    assert printed(script) == ["True", "True", "True", "True"]


def test_bad_url_message_does_not_echo_the_password() -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"DATABASE_URL": "mysql://user:s3cr3t@host/db"})

    assert "s3cr3t" not in str(error.value)


@pytest.mark.parametrize(("raw", "value"), [("none", None), ("NONE", None), ("0", 0), ("3", 3)])
def test_prepare_threshold(raw: str, value: int | None) -> None:
    assert Settings.from_env({"DB_PREPARE_THRESHOLD": raw}).db_prepare_threshold == value


def test_embedded_mode_creates_and_migrates_its_file_on_first_start(tmp_path: Path) -> None:
    instance = tmp_path / "instance"

    create_app(Settings(), instance_path=str(instance))
    create_app(Settings(), instance_path=str(instance))  # a second start finds it ready

    with sqlite3.connect(instance / "tasks.sqlite3") as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        (revision,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert {"tasks", "alembic_version"} <= tables
    config = Config()
    config.set_main_option("script_location", str(db.MIGRATIONS))
    assert revision == ScriptDirectory.from_config(config).get_current_head()


def test_the_database_url_is_logged_without_its_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="tasks_api"):
        create_app(
            Settings.from_env({"DATABASE_URL": NEON_POOLED, **AUTH}), instance_path=str(tmp_path)
        )

    assert "ep-cool-darkness-123456-pooler" in caplog.text
    assert "npg_secret" not in caplog.text


@pytest.mark.skipif("postgresql" not in BACKENDS, reason="TEST_DATABASES excludes postgresql")
def test_url_query_parameters_reach_libpq(postgres_url: URL, tmp_path: Path) -> None:
    raw = postgres_url.render_as_string(hide_password=False).replace("postgresql://", "postgres://")
    settings = Settings.from_env(
        {"DATABASE_URL": f"{raw}?application_name=tasks-api-check&sslmode=prefer", **AUTH}
    )
    app = create_app(settings, instance_path=str(tmp_path))

    with app.app_context():
        name = db.connection().execute(text("SHOW application_name")).scalar_one()
    app.extensions["tasks_api.engine"].dispose()

    assert name == "tasks-api-check"


def test_migrating_needs_no_auth_settings_but_serving_does() -> None:
    env = {"DATABASE_URL": "postgresql://app:pw@127.0.0.1:1/tasks"}

    assert Settings.from_env(env, serving=False).auth_jwt_secret is None
    with pytest.raises(ConfigError, match="no authentication is configured"):
        Settings.from_env(env)


def test_gunicorn_takes_port_and_workers_from_dotenv(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(ROOT / "tasks_api", project / "tasks_api")
    for name in ("wsgi.py", "gunicorn.conf.py"):
        shutil.copy2(ROOT / name, project / name)
    port = free_port()
    (project / ".env").write_text(
        f"PORT={port}\nWEB_CONCURRENCY=3\nINSTANCE_PATH={tmp_path / 'instance'}\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "WEB_CONCURRENCY")}
    env = {k: v for k, v in env.items() if not k.startswith(("DATABASE_URL", "AUTH_"))}

    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.1)
        # gunicorn spawns them one after another, up to 0.1 s apart.
        for _ in range(50):
            workers = [
                stat
                for stat in Path("/proc").glob("[0-9]*/stat")
                if _parent_pid(stat) == process.pid
            ]
            if len(workers) >= 3:
                break
            time.sleep(0.1)
        assert len(workers) == 3
    finally:
        process.terminate()
        process.wait(timeout=30)


def _parent_pid(stat: Path) -> int | None:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
