"""Request bodies past 64 KiB are refused whole, however they are framed.

A body comes with `Content-Length` or chunked (`Transfer-Encoding: chunked`, no length
announced). werkzeug's stream for a chunked body stops at MAX_CONTENT_LENGTH without
saying so, which let a parser read the first 64 KiB of a longer body as if it were all
of it. Each case runs in the app (the test client, chunked as gunicorn frames it: no
length, `wsgi.input_terminated`) and through a real gunicorn, byte for byte on the wire.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from tasks_api import MAX_BODY_BYTES, db
from tests.support import (
    BACKENDS,
    REQUIRED,
    assert_problem,
    drop_postgres_database,
    free_port,
    scratch_postgres_database,
    start_gunicorn,
    token_for,
)

LIMIT = MAX_BODY_BYTES

# The probes of issue 13: each was accepted (or misjudged) when sent chunked.
# Valid JSON up to the limit, then more: the first 64 KiB parse as a task.
PADDED_GARBAGE = b'{"title":"x"}' + b" " * 65_536 + b"THIS IS NOT JSON"
# 2 MB of which the first 64 KiB are a valid object.
TWO_MEGABYTES = b'{"title":"x"}' + b" " * (2 * 1024 * 1024)
# A description of 70 KB: cut at 64 KiB it is an unterminated string (was 400, not 413).
LONG_DESCRIPTION = json.dumps({"title": "x", "description": "d" * 70_000}).encode()
OVER = {"padded-garbage": PADDED_GARBAGE, "2mb": TWO_MEGABYTES, "70kb": LONG_DESCRIPTION}


def padded(size: int, fields: bytes = b'{"title":"padded"}') -> bytes:
    """A JSON object padded with trailing whitespace to exactly `size` bytes."""
    return fields + b" " * (size - len(fields))


def send(client: FlaskClient, url: str, body: bytes, framing: str, method: str = "POST") -> Any:
    if framing == "content-length":
        return client.open(url, method=method, data=body, content_type="application/json")
    # As gunicorn hands a chunked body to the app: no CONTENT_LENGTH, a terminated stream.
    return client.open(
        url,
        method=method,
        input_stream=io.BytesIO(body),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def stored(client: FlaskClient, tasks_url: str) -> list[dict[str, Any]]:
    body: list[dict[str, Any]] = client.get(tasks_url).get_json()
    return body


# --- in the app -----------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("body", OVER.values(), ids=OVER.keys())
def test_a_body_over_64_kib_is_413_and_stores_nothing(
    client: FlaskClient, tasks_url: str, framing: str, body: bytes
) -> None:
    problem = assert_problem(send(client, tasks_url, body, framing), 413)

    assert problem["detail"] == "The body is larger than 64 KiB."
    assert stored(client, tasks_url) == []


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("size", [LIMIT, LIMIT - 1, 20])
def test_a_body_up_to_64_kib_is_read_whole(
    client: FlaskClient, tasks_url: str, framing: str, size: int
) -> None:
    response = send(client, tasks_url, padded(size), framing)

    assert response.status_code == 201, response.get_json()
    assert [task["title"] for task in stored(client, tasks_url)] == ["padded"]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_one_byte_past_64_kib_is_413(client: FlaskClient, tasks_url: str, framing: str) -> None:
    assert_problem(send(client, tasks_url, padded(LIMIT + 1), framing), 413)
    assert stored(client, tasks_url) == []


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_updates_and_toggles_past_64_kib_change_nothing(
    client: FlaskClient, task_url: str, task: dict[str, Any], framing: str
) -> None:
    # Cut at 64 KiB, these would be a valid rename and a bodiless toggle.
    assert_problem(send(client, task_url, padded(LIMIT + 10), framing, "PUT"), 413)
    toggle = padded(LIMIT + 10, b"{}")
    assert_problem(send(client, f"{task_url}/complete", toggle, framing, "PATCH"), 413)

    assert client.get(task_url).get_json() == task


# --- through gunicorn -------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """gunicorn as the Procfile runs it, on a PostgreSQL database of its own."""
    if "postgresql" not in BACKENDS:
        pytest.skip("TEST_DATABASES excludes postgresql")
    url, name = scratch_postgres_database("tasks_api_bodies")
    db.upgrade(url.set(drivername="postgresql+psycopg"))
    env = {**REQUIRED, "DATABASE_URL": url.render_as_string(hide_password=False)}
    log_path: Path = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    port = free_port()
    with log_path.open("w") as log:
        process = start_gunicorn(env, port, log)
        try:
            yield port
        finally:
            process.terminate()
            process.wait(timeout=30)
            drop_postgres_database(name)
    assert "Traceback" not in log_path.read_text()


def call(
    port: int, method: str, path: str, body: bytes | None = None, *, chunked: bool = False
) -> tuple[int, str, Any]:
    """One request on its own connection: (status, Content-Type, parsed body).

    The body is written from another thread while the answer is read, as browsers and
    curl do: a server that answers before reading all of a large body may close the
    connection under a client that insists on sending the rest first.
    """
    user = path.split("/")[2]
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token_for(user)}\r\nContent-Type: application/json\r\n"
    )
    if body is None:
        payload = b""
    elif chunked:
        pieces = [body[i : i + 16_384] for i in range(0, len(body), 16_384)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        head += "Transfer-Encoding: chunked\r\n"
    else:
        payload = body
        head += f"Content-Length: {len(body)}\r\n"
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)

    def write() -> None:
        with contextlib.suppress(OSError):  # the server stopped reading: it has answered
            sock.sendall(head.encode() + b"\r\n" + payload)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        raw = response.read()
    finally:
        writer.join()
        sock.close()
    return response.status, response.getheader("Content-Type") or "", json.loads(raw or "null")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("body", OVER.values(), ids=OVER.keys())
def test_through_gunicorn_a_body_over_64_kib_is_413(
    server: int, user_id: str, chunked: bool, body: bytes
) -> None:
    path = f"/api/{user_id}/tasks"

    status, content_type, problem = call(server, "POST", path, body, chunked=chunked)

    assert (status, content_type) == (413, "application/problem+json"), problem
    assert problem["status"] == 413
    assert call(server, "GET", path)[2] == []


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("size", [LIMIT, 20])
def test_through_gunicorn_a_body_up_to_64_kib_is_read_whole(
    server: int, user_id: str, chunked: bool, size: int
) -> None:
    path = f"/api/{user_id}/tasks"

    status, _, task = call(server, "POST", path, padded(size), chunked=chunked)

    assert status == 201, task
    assert [t["id"] for t in call(server, "GET", path)[2]] == [task["id"]]


def test_through_gunicorn_the_connection_serves_the_next_request_after_a_413(
    server: int, user_id: str
) -> None:
    path = f"/api/{user_id}/tasks"
    headers = {"Authorization": f"Bearer {token_for(user_id)}", "Content-Type": "application/json"}
    connection = http.client.HTTPConnection("127.0.0.1", server, timeout=20)
    try:
        connection.request("POST", path, body=iter([PADDED_GARBAGE]), headers=headers)
        first = connection.getresponse()
        first.read()
        if first.will_close:  # the server may end the connection instead: then a new one
            connection.close()
        connection.request("POST", path, body=iter([b'{"title":"next"}']), headers=headers)
        second = connection.getresponse()
        created = json.loads(second.read())
    finally:
        connection.close()

    assert (first.status, second.status) == (413, 201)
    assert [t["title"] for t in call(server, "GET", path)[2]] == [created["title"]] == ["next"]
