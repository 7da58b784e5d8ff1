"""The `flask --app wsgi ...` commands, run as a person runs them: in a shell, as processes.

Their result is alone on stdout (so `$(flask --app wsgi token alice)` is the token), their
progress on stderr, and a failure is one `tasks_api: ...` line without a traceback.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jwt
import pytest

from tasks_api import db
from tasks_api.models import Base
from tests.support import (
    ADMIN_URL,
    ROOT,
    drop_postgres_database,
    scratch_postgres_database,
)

PREVIOUS_REVISION = f"{int(db.HEAD_REVISION) - 1:04d}"


def clean_env(**settings: str) -> dict[str, str]:
    """The test run's environment without the service's settings, plus `settings`."""
    prefixes = ("DATABASE_URL", "AUTH_", "SECRET_KEY", "INSTANCE_PATH", "DB_", "LOG_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    return env | settings


def flask(
    *args: str, instance: Path, cwd: Path = ROOT, settings: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", *args],
        cwd=cwd,
        env=clean_env(INSTANCE_PATH=str(instance), **(settings or {})),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_token_is_alone_on_stdout(tmp_path: Path) -> None:
    result = flask("token", "alice", instance=tmp_path)

    assert result.returncode == 0, result.stderr
    token = result.stdout.removesuffix("\n")
    assert "\n" not in token and " " not in token
    secret = (tmp_path / "auth-secret").read_text().strip()
    assert jwt.decode(token, secret, algorithms=["HS256"])["sub"] == "alice"
    assert "auth: bearer tokens signed" in result.stderr  # start-up logs: stderr


def test_token_signs_for_a_deployment_with_its_settings_without_its_database(
    tmp_path: Path,
) -> None:
    """docs/authentication.md's "A token for a deployed service", as a person runs it."""
    page = (ROOT / "docs" / "authentication.md").read_text()
    section = page.split("## A token for a deployed service\n", 1)[1].split("\n## ", 1)[0]
    (command,) = re.findall(r"^flask --app wsgi (token .*)$", section, re.M)
    secret = "the-deployment-secret-of-32-bytes-or-more"
    deployment = {
        "DATABASE_URL": "postgresql://app:pw@127.0.0.1:1/tasks",  # nothing listens there
        "SECRET_KEY": "the-deployment-secret-key-of-32-bytes",
        "AUTH_JWT_SECRET": secret,
        "AUTH_JWT_ISSUER": "https://app.example.com",
        "AUTH_JWT_AUDIENCE": "https://app.example.com",
    }

    result = flask(*command.split(), instance=tmp_path, settings=deployment)

    assert result.returncode == 0, result.stderr
    claims = jwt.decode(
        result.stdout.strip(),
        secret,
        algorithms=["HS256"],
        issuer="https://app.example.com",
        audience="https://app.example.com",
    )
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 15 * 60


def test_migrations_say_where_they_moved_the_embedded_database(tmp_path: Path) -> None:
    first = flask("db", "upgrade", instance=tmp_path)
    down = flask("db", "downgrade", "-1", instance=tmp_path)
    up = flask("db", "upgrade", instance=tmp_path)
    again = flask("db", "upgrade", instance=tmp_path)

    assert first.stdout == f"database migrated from revision (none) to {db.HEAD_REVISION}\n"
    assert down.returncode == up.returncode == again.returncode == 0, down.stderr + up.stderr
    assert down.stdout == (
        f"database migrated from revision {db.HEAD_REVISION} to {PREVIOUS_REVISION}\n"
    )
    assert up.stdout == (
        f"database migrated from revision {PREVIOUS_REVISION} to {db.HEAD_REVISION}\n"
    )
    assert again.stdout == f"database already at revision {db.HEAD_REVISION}\n"


@pytest.mark.skipif(ADMIN_URL is None, reason="no PostgreSQL server")
def test_migrating_postgresql_needs_only_the_database_url(tmp_path: Path) -> None:
    url, name = scratch_postgres_database("tasks_api_cli")
    try:
        # No AUTH_* and no SECRET_KEY: a release step needs none of them.
        database = {"DATABASE_URL": url.render_as_string(False)}
        result = flask("db", "upgrade", instance=tmp_path, settings=database)
    finally:
        drop_postgres_database(name)

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"database migrated from revision (none) to {db.HEAD_REVISION}\n"
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # no secrets generated


@pytest.mark.parametrize(
    ("args", "settings", "message"),
    [
        (
            ["db", "upgrade"],
            {"DATABASE_URL": "postgresql://app:hunter2@127.0.0.1:1/tasks"},
            "port 1 failed: Connection refused Is the server running",
        ),
        (["db", "upgrade"], {"DATABASE_URL": "mysql://u:hunter2@h/d"}, "DATABASE_URL: expected"),
        (["db", "upgrade"], {"DB_POOL_SIZE": "many"}, "DB_POOL_SIZE: expected an integer"),
        (["db", "downgrade", "nonsense"], {}, "Can't locate revision identified by 'nonsense'"),
        (["token", "alice", "--expires-in", "100000000d"], {}, "--expires-in: expected"),
        (["token", "alice", "--expires-in", "9" * 40], {}, "--expires-in: expected"),
        (["token", "not valid!"], {}, "USER_ID: Must be 1 to 128 characters"),
        (
            ["token", "alice"],
            {"DATABASE_URL": "postgresql://app:hunter2@127.0.0.1:1/tasks"},
            "set AUTH_JWT_SECRET",
        ),
    ],
)
def test_a_failure_is_one_line_that_says_what_to_do(
    tmp_path: Path, args: list[str], settings: dict[str, str], message: str
) -> None:
    result = flask(*args, instance=tmp_path, settings=settings)

    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr
    # Progress may come first; the failure itself is the last line, and the only one.
    lines = result.stderr.splitlines()
    assert [line for line in lines if line.startswith("tasks_api:")] == lines[-1:]
    assert message in lines[-1]


def test_revision_writes_the_next_numbered_file_that_passes_ruff(tmp_path: Path) -> None:
    # A copy of the project, so the new migration lands in the copy's package.
    project = tmp_path / "project"
    shutil.copytree(ROOT / "tasks_api", project / "tasks_api")
    for name in ("wsgi.py", "pyproject.toml"):
        shutil.copy2(ROOT / name, project / name)

    behind = flask("db", "revision", "-m", "Add due dates!", instance=tmp_path, cwd=project)
    flask("db", "upgrade", instance=tmp_path, cwd=project)
    result = flask("db", "revision", "-m", "Add due dates!", instance=tmp_path, cwd=project)

    assert behind.stderr.splitlines()[-1] == (
        "tasks_api: Target database is not up to date. Run `flask --app wsgi db upgrade` first."
    )

    assert result.returncode == 0, result.stderr
    written = Path(result.stdout.strip())
    expected = f"{int(db.HEAD_REVISION) + 1:04d}_add_due_dates.py"
    assert written == project / "tasks_api" / "migrations" / "versions" / expected
    assert re.search(f'^revision: str = "{expected[:4]}"$', written.read_text(), re.M)
    # The models are what the migrations build: nothing to add.
    assert "op." not in written.read_text()
    ruff = Path(sys.executable).with_name("ruff")
    for check in (["check"], ["format", "--check"]):
        outcome = subprocess.run(
            [str(ruff), *check, str(written)], cwd=project, capture_output=True, text=True
        )
        assert outcome.returncode == 0, outcome.stdout + outcome.stderr


def test_db_distribute_prints_one_distribution_for_each_table_and_the_docs_show_it(
    tmp_path: Path,
) -> None:
    result = flask("db", "distribute", instance=tmp_path)

    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip()
    statements = re.findall(
        r"create_distributed_table\('(\w+)', '(\w+)'(?:, colocate_with => '(\w+)')?\)", printed
    )
    # Every table of the models, distributed by user and co-located with the tasks.
    assert sorted(name for name, _, _ in statements) == sorted(Base.metadata.tables)
    assert {column for _, column, _ in statements} == {"user_id"}
    assert statements[0] == ("tasks", "user_id", "")
    assert {colocated for _, _, colocated in statements[1:]} == {"tasks"}
    # docs/distributed.md shows that output as it is, and a row for every table.
    page = (ROOT / "docs" / "distributed.md").read_text()
    shown = re.search(r"```sql\n(   -- Made by.*?)   ```", page, re.S)
    assert shown is not None
    assert textwrap.dedent(shown[1]).strip() == printed
    for table in Base.metadata.tables:
        assert f"| `{table}` |" in page, table
