"""Shared by the test modules: the scratch PostgreSQL databases and problem assertions."""

from __future__ import annotations

import os
import re
import time
import uuid
from typing import Any
from urllib.parse import unquote

import jwt
import psycopg
import pytest
from flask.testing import FlaskClient
from sqlalchemy.engine import URL, make_url
from werkzeug.test import TestResponse

# The shared secret the test apps verify HS256 tokens with (AUTH_JWT_SECRET).
SECRET = "test-secret-of-at-least-thirty-two-bytes"
# What an app with DATABASE_URL needs besides: a token secret and Flask's SECRET_KEY.
REQUIRED = {"AUTH_JWT_SECRET": SECRET, "SECRET_KEY": "test-secret-key-of-32-bytes-or-more"}

BACKENDS = [b.strip() for b in os.environ.get("TEST_DATABASES", "postgresql,sqlite").split(",")]
ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def scratch_postgres_database(prefix: str) -> tuple[URL, str]:
    """Create an empty database on the test server; return its URL and name."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
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
