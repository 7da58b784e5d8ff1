"""Shared by the test modules: the scratch PostgreSQL databases and problem assertions."""

from __future__ import annotations

import os
import uuid
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import URL, make_url
from werkzeug.test import TestResponse

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
