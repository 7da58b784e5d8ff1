"""Shared by the test modules: the scratch PostgreSQL databases and problem assertions."""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import glob
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jwt
import psycopg
import pytest
from flask.testing import FlaskClient
from sqlalchemy.engine import URL, make_url
from werkzeug.test import TestResponse

ROOT = Path(__file__).resolve().parent.parent

# The shared secret the test apps verify HS256 tokens with (AUTH_JWT_SECRET).
SECRET = "test-secret-of-at-least-thirty-two-bytes"
# What an app with DATABASE_URL needs besides: a token secret and Flask's SECRET_KEY.
REQUIRED = {"AUTH_JWT_SECRET": SECRET, "SECRET_KEY": "test-secret-key-of-32-bytes-or-more"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# Debian keeps them off PATH, one folder per major version; elsewhere initdb is on PATH.
DEBIAN_BINARIES = "/usr/lib/postgresql/<version>/bin"
POSTGRES_BINARIES = sorted(
    glob.glob(DEBIAN_BINARIES.replace("<version>", "*")), key=lambda d: int(d.split("/")[-2])
) or [os.path.dirname(initdb) for initdb in filter(None, [shutil.which("initdb")])]


class Cluster:
    """A throwaway PostgreSQL cluster; run as the `postgres` user when we are root."""

    def __init__(self) -> None:
        self.bin = POSTGRES_BINARIES[-1]
        self.dir = Path(tempfile.mkdtemp(prefix="tasks_api_cluster_"))
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres")

    @staticmethod
    def available() -> bool:
        runs_as_postgres = os.geteuid() != 0 or shutil.which("runuser") is not None
        return bool(POSTGRES_BINARIES) and runs_as_postgres

    def _run(self, tool: str, *args: str) -> None:
        command = [f"{self.bin}/{tool}", *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.dir / "server.log")  # not our pipes: the server outlives pg_ctl
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def remove(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def probe_postgres(url: str) -> tuple[bool, str]:
    """Whether the suite can use the server at `url`, and what was found there, in words:
    a server that answered, nothing listening, or a server that refused the login."""
    target = make_url(url)
    shown = target.render_as_string(hide_password=True)
    host, port = target.host or "localhost", target.port or 5432
    if not host.startswith("/"):  # a TCP address, not a Unix socket's folder
        try:
            socket.create_connection((host, port), timeout=3).close()
        except OSError as error:
            return False, f"nothing listens at {host}:{port} ({error.strerror or error})"
    try:
        psycopg.connect(url, autocommit=True, connect_timeout=3).close()
    except psycopg.OperationalError as error:
        reason = str(error).strip().splitlines()[-1].split("FATAL:  ")[-1]
        return False, (
            f'the server at {host}:{port} answered but refused role "{target.username}" on '
            f'database "{target.database}": {reason}'
        )
    return True, f"the server at {shown}"


def no_cluster_note(found: str) -> str:
    return (
        f"PostgreSQL: {found}; and no PostgreSQL binaries (initdb) are on PATH or in "
        f"{DEBIAN_BINARIES} (where Debian puts them), so no throwaway cluster could be "
        "started: only the SQLite tests run. For the rest, set TEST_POSTGRES_URL to a URL the "
        "server lets in, or install PostgreSQL (Debian: apt install postgresql)."
    )


def _find_postgres() -> tuple[str | None, str]:
    """A PostgreSQL server for the suite, and a line that says where it came from.

    The server at TEST_POSTGRES_URL (default: the local one) when it lets us in; else a
    throwaway cluster from the local PostgreSQL binaries, removed when the run ends; else
    none, and the PostgreSQL tests do not run. The line says what was found at the URL.
    """
    url = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    usable, found = probe_postgres(url)
    if usable:
        return url, f"PostgreSQL: {found}"
    if not POSTGRES_BINARIES:
        return None, no_cluster_note(found)
    if not Cluster.available():
        return None, (
            f"PostgreSQL: {found}; the binaries in {POSTGRES_BINARIES[-1]} cannot start a "
            "throwaway cluster as root without runuser: only the SQLite tests run."
        )
    cluster = Cluster()
    cluster.start()
    atexit.register(cluster.remove)
    return cluster.url, (
        f"PostgreSQL: {found}; a throwaway cluster from "
        f"{cluster.bin}/initdb on port {cluster.port} runs the tests instead"
    )


ADMIN_URL, POSTGRES_NOTE = _find_postgres()
# pgbouncer: PostgreSQL behind PgBouncer in transaction mode with TLS, as Neon's pooler.
_DEFAULT_BACKENDS = "sqlite" if ADMIN_URL is None else "postgresql,sqlite"
if ADMIN_URL is not None and shutil.which("pgbouncer"):
    _DEFAULT_BACKENDS += ",pgbouncer"
BACKENDS = [b.strip() for b in os.environ.get("TEST_DATABASES", _DEFAULT_BACKENDS).split(",")]


def scratch_postgres_database(prefix: str) -> tuple[URL, str]:
    """Create an empty database on the test server; return its URL and name."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    if ADMIN_URL is None:
        pytest.fail(POSTGRES_NOTE)
    try:
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {ADMIN_URL} ({exc}). Start it, point "
            "TEST_POSTGRES_URL at one, or run TEST_DATABASES=sqlite pytest."
        )
    return make_url(ADMIN_URL).set(database=name), name


def drop_postgres_database(name: str) -> None:
    assert ADMIN_URL is not None
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def assert_problem(response: TestResponse, status: int) -> dict[str, Any]:
    """Assert an RFC 9457 problem with this status; return its body."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.get_json(force=True)
    assert body["status"] == status
    assert body["type"] == "about:blank"
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert "Traceback" not in response.get_data(as_text=True)
    return body


def token_for(user_id: str, *, secret: str = SECRET, lifetime: int = 300, **claims: Any) -> str:
    """An HS256 token for `user_id`, made the way a front end would, not with app code."""
    now = int(time.time())
    payload = {"sub": user_id, "iat": now, "exp": now + lifetime, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


class UserClient(FlaskClient):
    """A test client that acts as the user in each /api path, with a valid token.

    A test that passes its own Authorization header (or `auth=False`) sends that instead.
    """

    def open(self, *args: Any, auth: bool = True, **kwargs: Any) -> TestResponse:
        path = args[0] if args and isinstance(args[0], str) else ""
        headers = dict(kwargs.pop("headers", None) or {})
        match = re.match(r"/api/([^/?]+)/", path)
        if auth and match and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {token_for(unquote(match[1]))}"
        return super().open(*args, headers=headers, **kwargs)


class RoundTripCounter:
    """A TCP proxy to PostgreSQL that counts round trips: each time the database answers
    after the app has spoken. What the network between them would see.
    """

    def __init__(self, upstream: URL) -> None:
        self.upstream = (upstream.host or "127.0.0.1", upstream.port or 5432)
        self.round_trips = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, url: URL) -> URL:
        return url.set(host="127.0.0.1", port=self.port)

    def count(self) -> int:
        with self._lock:
            return self.round_trips

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            server = socket.create_connection(self.upstream)
            # [the app has spoken since the database last answered, pipes still running]
            state = [False, 2]
            with self._lock:
                self.connections += 1
            for args in ((client, server, state, True), (server, client, state, False)):
                threading.Thread(target=self._pipe, args=args, daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, state: list[Any], up: bool) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    if up:
                        state[0] = True
                    elif state[0]:
                        state[0] = False
                        self.round_trips += 1
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        with self._lock:
            state[1] -= 1
            last = state[1] == 0
        if last:
            src.close()
            dst.close()

    def close(self) -> None:
        self._listener.close()


def start_gunicorn(env: dict[str, str], port: int, log: Any) -> subprocess.Popen[bytes]:
    """gunicorn as the Procfile runs it, on 127.0.0.1:`port`; returns once /health answers.

    `log` should be a file (or DEVNULL): a pipe nobody reads fills up and stalls workers.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "tasks_api", "--bind", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    for _ in range(100):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.1)
        finally:
            connection.close()
    process.terminate()
    raise RuntimeError(f"gunicorn on port {port} did not start")


class PgBouncer:
    """PgBouncer in transaction mode, TLS required from clients (a self-signed
    certificate made here), in front of the test PostgreSQL: a stand-in for Neon's pooler.
    """

    def __init__(self, upstream: URL) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tasks_api_pgbouncer_"))
        self.port = free_port()
        _self_signed_certificate(self.dir)
        (self.dir / "users.txt").write_text('"postgres" ""\n')
        (self.dir / "pgbouncer.ini").write_text(
            f"""[databases]
* = host={upstream.host} port={upstream.port or 5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.dir}/users.txt
pool_mode = transaction
max_client_conn = 500
default_pool_size = 20
client_tls_sslmode = require
client_tls_key_file = {self.dir}/server.key
client_tls_cert_file = {self.dir}/server.crt
logfile = {self.dir}/pgbouncer.log
"""
        )
        command = ["pgbouncer", str(self.dir / "pgbouncer.ini")]
        if os.geteuid() == 0:  # PgBouncer will not run as root
            shutil.chown(self.dir, "postgres")
            for file in self.dir.iterdir():
                shutil.chown(file, "postgres")
            command = ["runuser", "-u", "postgres", "--", *command]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not start: {self.dir / 'pgbouncer.log'}")

    def url(self, database: str) -> URL:
        return URL.create(
            "postgresql",
            username="postgres",
            host="127.0.0.1",
            port=self.port,
            database=database,
            query={"sslmode": "require"},
        )

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _self_signed_certificate(folder: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (folder / "server.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file = folder / "server.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
