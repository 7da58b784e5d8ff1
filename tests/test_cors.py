"""CORS, as a browser on another origin meets it: what it may call, read and cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from tasks_api import create_app
from tasks_api.config import Settings
from tests.support import SECRET, token_for

APP_ORIGIN = "https://app.example.com"


def cors_client(tmp_path: Path, origins: str) -> FlaskClient:
    settings = Settings.from_env({"AUTH_JWT_SECRET": SECRET, "CORS_ORIGINS": origins})
    return create_app(settings, instance_path=str(tmp_path)).test_client()


@pytest.fixture(params=["one origin", "two origins"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> FlaskClient:
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
    client: FlaskClient, origin: str | None
) -> None:
    # A shared cache keys on Vary: without it, the answer to one origin (or to none,
    # without CORS headers) could be handed to another.
    headers = {} if origin is None else {"Origin": origin}
    answers = [
        client.get("/api/alice/tasks", headers=headers | bearer()),
        client.get("/api/alice/tasks", headers=headers),  # 401
        client.get("/api/alice/tasks", headers=headers | bearer("bob")),  # 403
        client.options(
            "/api/alice/tasks",
            headers=headers | {"Access-Control-Request-Method": "POST"},
        ),
    ]

    for response in answers:
        assert "Origin" in response.headers.get("Vary", ""), response.status


def test_scripts_may_read_the_replay_and_authentication_headers(client: FlaskClient) -> None:
    origin = {"Origin": APP_ORIGIN}
    create = origin | bearer() | {"Idempotency-Key": "cors-replay"}

    client.post("/api/alice/tasks", json={"title": "once"}, headers=create)
    replayed = client.post("/api/alice/tasks", json={"title": "once"}, headers=create)
    refused = client.get("/api/alice/tasks", headers=origin)

    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert {"Idempotent-Replayed", "ETag", "Location"} <= exposed(replayed)
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "WWW-Authenticate" in exposed(refused)
