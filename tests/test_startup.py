"""Starting against a database that refuses the service: the web process and the release
step stop with one line saying what to fix, so a platform keeps the previous release;
a database that is only unreachable lets the service start and answer 503 until it is
back. The server's own settings, malformed, are one line naming the variable. And the
build step docs/deployment.md gives leaves a start nothing of the app's to compile."""

from __future__ import annotations

import http.client
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from tests.support import REQUIRED, ROOT, free_port, start_gunicorn
from tests.test_cli import clean_env, flask


@pytest.fixture
def no_tls_server() -> Iterator[int]:
    """A port whose server answers PostgreSQL's TLS request with "no", as one without
    TLS does."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(8)  # SSLRequest
                conn.sendall(b"N")
                conn.recv(1024)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    thread.join(timeout=5)


def refusing_urls(postgres_url: URL, no_tls_port: int) -> dict[str, tuple[str, str]]:
    """Each way a database refuses the service for good: its URL and a word of the fix."""
    with_password = postgres_url.set(password="hunter2")
    return {
        "no such database": (
            with_password.set(database="tasks_api_no_such_database").render_as_string(False),
            "does not exist: create it",
        ),
        "no such role": (
            with_password.set(username="tasks_api_no_such_role").render_as_string(False),
            "role or password in the URL is refused",
        ),
        "TLS required, not offered": (
            with_password.set(port=no_tls_port, query={"sslmode": "require"}).render_as_string(
                False
            ),
            "asks for TLS",
        ),
    }


def web(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The Procfile's web process."""
    return subprocess.run(
        [sys.executable, "-m", "tasks_api"],
        cwd=ROOT,
        env=clean_env(**{**REQUIRED, "PORT": str(free_port()), **env}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("case", ["no such database", "no such role", "TLS required, not offered"])
def test_a_database_that_refuses_the_service_stops_the_start_with_one_line(
    postgres_url: URL, no_tls_server: int, case: str
) -> None:
    url, fix = refusing_urls(postgres_url, no_tls_server)[case]

    result = web({"DATABASE_URL": url})

    output = result.stdout + result.stderr
    assert result.returncode != 0
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert len(errors) == 1, output
    assert "DATABASE_URL is refused" in errors[0] and fix in errors[0]
    assert "Traceback" not in output and "hunter2" not in output
    assert "Booting worker" not in output  # no worker started


def test_an_unreachable_database_lets_the_service_start_and_answer_503(tmp_path: Path) -> None:
    port = free_port()
    env = {**REQUIRED, "DATABASE_URL": f"postgresql://app:pw@127.0.0.1:{free_port()}/tasks"}
    with (tmp_path / "log").open("wb") as log:
        process = start_gunicorn(env, port, log)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/health/ready")
        response = connection.getresponse()
        response.read()
        connection.close()
    finally:
        process.terminate()
        process.wait(timeout=30)

    assert response.status == 503 and response.getheader("Retry-After")
    assert "database not reachable at start" in (tmp_path / "log").read_text()


@pytest.mark.parametrize("case", ["no such database", "no such role"])
def test_the_release_step_fails_when_the_pooled_url_is_refused(
    postgres_url: URL, no_tls_server: int, tmp_path: Path, case: str
) -> None:
    # Migrations use DATABASE_URL_UNPOOLED; the web process would use DATABASE_URL.
    url, fix = refusing_urls(postgres_url, no_tls_server)[case]
    direct = postgres_url.render_as_string(False)

    refused = flask(
        "db",
        "upgrade",
        instance=tmp_path,
        settings={"DATABASE_URL_UNPOOLED": direct, "DATABASE_URL": url},
    )
    accepted = flask(
        "db",
        "upgrade",
        instance=tmp_path,
        settings={"DATABASE_URL_UNPOOLED": direct, "DATABASE_URL": direct},
    )

    assert refused.returncode == 1
    assert refused.stderr.splitlines()[-1].startswith("tasks_api: DATABASE_URL is refused")
    assert fix in refused.stderr and "hunter2" not in refused.stderr
    assert accepted.returncode == 0, accepted.stderr


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PORT", "abc", "PORT: expected an integer, got 'abc'"),
        ("PORT", "70000", "PORT: expected an integer from 0 to 65535, got 70000"),
        ("WEB_CONCURRENCY", "two", "WEB_CONCURRENCY: expected an integer, got 'two'"),
        ("WEB_CONCURRENCY", "0", "WEB_CONCURRENCY: expected an integer from 1 to 64, got 0"),
        ("WEB_THREADS", "-1", "WEB_THREADS: expected an integer from 1 to 256, got -1"),
    ],
)
def test_a_malformed_server_setting_is_one_line_naming_it(
    name: str, value: str, message: str
) -> None:
    result = web({name: value})

    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [f"tasks_api: {message}"], result.stderr


# Imports the app as the web process does, and prints the app's files Python compiled.
COMPILED_AT_START = """
import importlib.machinery, sys
compiled = []
source_to_code = importlib.machinery.SourceFileLoader.source_to_code
def counted(self, data, path, *args, **kwargs):
    compiled.append(path)
    return source_to_code(self, data, path, *args, **kwargs)
importlib.machinery.SourceFileLoader.source_to_code = counted
import wsgi, tasks_api.server
print(sum(path.startswith(sys.argv[1]) for path in compiled))
"""


def test_the_documented_build_step_leaves_a_start_nothing_to_compile(tmp_path: Path) -> None:
    deployment = (ROOT / "docs" / "deployment.md").read_text()
    (command,) = re.findall(r"^python -m compileall .*$", deployment, re.M)
    tree = tmp_path / "build"
    shutil.copytree(
        ROOT / "tasks_api", tree / "tasks_api", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("wsgi.py", "gunicorn.conf.py"):
        shutil.copy2(ROOT / name, tree / name)
    # Every start on a dyno, or with PYTHONDONTWRITEBYTECODE: nothing it compiles is kept.
    env = clean_env(INSTANCE_PATH=str(tmp_path / "instance"), PYTHONDONTWRITEBYTECODE="1")

    def compiled_at_start() -> int:
        start = [sys.executable, "-c", COMPILED_AT_START, str(tree)]
        done = subprocess.run(start, cwd=tree, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.splitlines()[-1])  # after the app's log lines

    assert compiled_at_start() > 30  # from source: every module of the package
    subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=tree, env=env, check=True)
    assert compiled_at_start() == 0
