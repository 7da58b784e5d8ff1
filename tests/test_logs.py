"""One log line per request: route template, status, duration, request id; text or JSON."""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from tasks_api import create_app, logs
from tasks_api.config import ConfigError, Settings
from tasks_api.logs import JSONFormatter
from tests.support import SECRET, UserClient


def request_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "tasks_api.request"]


def test_each_request_logs_one_line_with_its_route_template(
    client: FlaskClient, task_url: str, task: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="tasks_api"):
        response = client.get(task_url, headers={"X-Request-ID": "req-42"})

    (line,) = request_lines(caplog)
    assert line.method == "GET"  # type: ignore[attr-defined]
    assert line.route == "/api/<user_id>/tasks/<uuid:task_id>"  # type: ignore[attr-defined]
    assert line.status == 200  # type: ignore[attr-defined]
    assert line.duration_ms > 0  # type: ignore[attr-defined]
    assert line.request_id == "req-42" == response.headers["X-Request-ID"]  # type: ignore[attr-defined]
    message = line.getMessage()
    assert message.startswith("GET /api/<user_id>/tasks/<uuid:task_id> 200 ")
    assert task["id"] not in message and task["user_id"] not in message


def test_errors_and_unknown_routes_are_logged_too(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="tasks_api"):
        client.get("/no/such/route")
        client.get("/api/alice/tasks", auth=False)

    assert [(r.route, r.status) for r in request_lines(caplog)] == [  # type: ignore[attr-defined]
        ("<no route>", 404),
        ("/api/<user_id>/tasks", 401),
    ]


def test_json_format_is_one_object_per_line(
    client: FlaskClient, tasks_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="tasks_api"):
        client.post(tasks_url, json={"title": "x"})

    (line,) = request_lines(caplog)
    entry = json.loads(JSONFormatter().format(line))
    assert entry["level"] == "INFO"
    assert entry["logger"] == "tasks_api.request"
    assert (entry["method"], entry["route"], entry["status"]) == (
        "POST",
        "/api/<user_id>/tasks",
        201,
    )
    assert isinstance(entry["duration_ms"], float)
    assert len(entry["request_id"]) == 32
    assert entry["time"].endswith("+00:00")


def test_log_format_json_writes_json_to_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app(
        Settings.from_env({"AUTH_JWT_SECRET": SECRET, "LOG_FORMAT": "json"}),
        instance_path=str(tmp_path),
    )
    app.test_client_class = UserClient
    app.test_client().get("/api/alice/tasks")

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    assert {"route": "/api/<user_id>/tasks", "status": 200}.items() <= lines[-1].items()


def test_log_format_is_validated() -> None:
    with pytest.raises(ConfigError, match="LOG_FORMAT: expected text or json"):
        Settings.from_env({"LOG_FORMAT": "xml"})


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_request_lines_written_directly_are_what_the_formatter_writes(
    log_format: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In production the root logger has configure()'s handler alone, and request lines
    # skip the logging machinery; under pytest, whose handlers are there too, they do not.
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:]
    try:
        logs.configure(Settings.from_env({"LOG_FORMAT": log_format}), stream)
        (handler,) = [h for h in root.handlers if getattr(h, "tasks_api", False)]
        lines = logs._lines
        assert lines is not None and not lines.ready()  # pytest's handlers are there
        root.handlers = [handler]
        assert lines.ready()
        fields = {
            "method": "GET",
            "route": "/api/<user_id>/tasks",
            "status": 200,
            "duration_ms": 1.25,
            "request_id": "req-42",
        }
        message = "GET /api/<user_id>/tasks 200 1.25ms request_id=req-42"
        monkeypatch.setattr(time, "time", lambda: 1_764_849_600.25)
        lines.write(message, fields)
    finally:
        root.handlers = saved
    record = logs.log.makeRecord(
        logs.log.name, logging.INFO, "", 0, message, (), None, extra=fields
    )
    record.created, record.msecs = 1_764_849_600.25, 250.0

    assert stream.getvalue() == handler.format(record) + "\n"
