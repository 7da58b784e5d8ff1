"""CORS, as a browser on another origin meets it: what it may call, read and cache."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from tasks_api import create_app
from tasks_api.config import Settings
from tests.support import REQUIRED, SECRET, free_port, start_gunicorn, token_for

APP_ORIGIN = "https://app.example.com"


def cors_client(tmp_path: Path, origins: str) -> FlaskClient:
    settings = Settings.from_env({"AUTH_JWT_SECRET": SECRET, "CORS_ORIGINS": origins})
    return create_app(settings, instance_path=str(tmp_path)).test_client()


@pytest.fixture(params=["one origin", "two origins"])
def cors(request: pytest.FixtureRequest, tmp_path: Path) -> FlaskClient:
    origins = (
        APP_ORIGIN if request.param == "one origin" else f"{APP_ORIGIN}, http://localhost:3000"
    )
    return cors_client(tmp_path, origins)


def bearer(user: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(user)}"}


def exposed(response: Any) -> set[str]:
    return {h.strip() for h in response.headers.get("Access-Control-Expose-Headers", "").split(",")}


@pytest.mark.parametrize("origin", [APP_ORIGIN, "https://evil.example.com", None])
def test_every_answer_of_an_api_route_varies_by_origin(
    cors: FlaskClient, origin: str | None
) -> None:
    # A shared cache keys on Vary: without it, the answer to one origin (or to none,
    # without CORS headers) could be handed to another.
    headers = {} if origin is None else {"Origin": origin}
    answers = [
        cors.get("/api/alice/tasks", headers=headers | bearer()),
        cors.get("/api/alice/tasks", headers=headers),  # 401
        cors.get("/api/alice/tasks", headers=headers | bearer("bob")),  # 403
        cors.options(
            "/api/alice/tasks",
            headers=headers | {"Access-Control-Request-Method": "POST"},
        ),
    ]

    for response in answers:
        assert "Origin" in response.headers.get("Vary", ""), response.status


def test_scripts_may_read_the_replay_and_authentication_headers(cors: FlaskClient) -> None:
    origin = {"Origin": APP_ORIGIN}
    create = origin | bearer() | {"Idempotency-Key": "cors-replay"}

    cors.post("/api/alice/tasks", json={"title": "once"}, headers=create)
    replayed = cors.post("/api/alice/tasks", json={"title": "once"}, headers=create)
    refused = cors.get("/api/alice/tasks", headers=origin)

    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert {"Idempotent-Replayed", "ETag", "Location"} <= exposed(replayed)
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "WWW-Authenticate" in exposed(refused)


@pytest.fixture
def two_origins(tmp_path: Path) -> FlaskClient:
    return cors_client(tmp_path, f"{APP_ORIGIN}, http://localhost:3000")


def preflight(client: FlaskClient, origin: str) -> Any:
    return client.options(
        "/api/alice/tasks",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )


@pytest.mark.parametrize("origin", ["https://app.example.com", "http://localhost:3000"])
def test_cors_preflight_from_an_allowed_origin_needs_no_token(
    two_origins: FlaskClient, origin: str
) -> None:
    response = preflight(two_origins, origin)

    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == origin
    allowed = {
        h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")
    }
    assert {"authorization", "content-type", "idempotency-key"} <= allowed
    assert "POST" in response.headers["Access-Control-Allow-Methods"]


def test_cors_actual_request_exposes_the_useful_headers(two_origins: FlaskClient) -> None:
    response = two_origins.post(
        "/api/alice/tasks",
        json={"title": "x"},
        headers={"Origin": "https://app.example.com", **bearer()},
    )

    assert response.status_code == 201
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert {"ETag", "Link", "Location"} <= exposed(response)


@pytest.mark.parametrize("origin", ["https://evil.example.com", "https://app.example.com.evil.io"])
def test_cors_other_origins_get_no_allowance(two_origins: FlaskClient, origin: str) -> None:
    assert "Access-Control-Allow-Origin" not in preflight(two_origins, origin).headers
    response = two_origins.get("/api/alice/tasks", headers={"Origin": origin})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_no_cors_by_default(client: FlaskClient) -> None:
    response = preflight(client, "https://app.example.com")

    assert "Access-Control-Allow-Origin" not in response.headers


# --- in a real browser -----------------------------------------------------------------


def test_a_page_on_an_allowed_origin_reads_the_servers_own_problems_and_replays(
    tmp_path: Path,
) -> None:
    """Chromium, from a page on another origin: the HTTP server's own 414 (its problem
    body, not an opaque network error) and a replayed create's Idempotent-Replayed."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            raise RuntimeError("REQUIRE_BROWSER=1 but chromium is not installed")
        pytest.skip("chromium is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    page_server = make_server("127.0.0.1", 0, blank_page)
    threading.Thread(target=page_server.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{page_server.server_port}"
    port = free_port()
    env = {**REQUIRED, "CORS_ORIGINS": origin, "INSTANCE_PATH": str(tmp_path / "instance")}
    with (tmp_path / "log").open("wb") as log:
        process = start_gunicorn(env, port, log)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.goto(origin)
                seen = page.evaluate(
                    BROWSER_CALLS, [f"http://127.0.0.1:{port}", token_for("alice")]
                )
            finally:
                browser.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
        page_server.shutdown()

    assert seen["long"] == {"status": 414, "problem": 414, "type": "application/problem+json"}
    assert seen["replayed"] == [None, "true"]


def blank_page(_environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """The front end's origin: a page whose scripts call the API on another one."""
    start_response("200 OK", [("Content-Type", "text/html")])
    return [b"<!doctype html><title>a front end</title>"]


BROWSER_CALLS = """async ([api, token]) => {
  const auth = {Authorization: `Bearer ${token}`};
  const long = await fetch(`${api}/api/alice/tasks?q=${"x".repeat(9000)}`, {headers: auth});
  const problem = await long.json();
  const replayed = [];
  for (let i = 0; i < 2; i++) {
    const created = await fetch(`${api}/api/alice/tasks`, {
      method: "POST",
      headers: {...auth, "Content-Type": "application/json", "Idempotency-Key": "from-a-page"},
      body: JSON.stringify({title: "once"}),
    });
    replayed.push(created.headers.get("Idempotent-Replayed"));
  }
  return {
    long: {status: long.status, problem: problem.status, type: long.headers.get("Content-Type")},
    replayed,
  };
}"""
