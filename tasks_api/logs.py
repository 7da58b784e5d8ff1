"""Logs: one line per request with its id, as text or JSON; never a token or secret.

The web process logs to stdout; the `flask` command to stderr, its result alone on stdout.

Request lines name the route's template (`/api/<user_id>/tasks/<uuid:task_id>`), not
the path a client sent, so ids, titles in cursors and other user data stay out.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from flask import Flask, Response

from .config import Settings
from .context import current_globals, current_request

log = logging.getLogger("tasks_api.request")

# A router's X-Request-ID is taken as the request's id when it looks like one.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Fields a request line carries, shown as JSON members by the JSON format.
REQUEST_FIELDS = ("method", "route", "status", "duration_ms", "request_id")


class JSONFormatter(logging.Formatter):
    """One JSON object per line, for log drains."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {name: getattr(record, name) for name in REQUEST_FIELDS if hasattr(record, name)}
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return _json_line(
            record.created, record.levelname, record.name, record.getMessage(), fields
        )


class RequestLines:
    """Writes the request lines straight to the handler's stream, as its formatter would
    have written them: a LogRecord, its formatting and the logging machinery's calls cost
    ~7% of a GET's worker CPU. Used only while the root logger's handlers are the one
    configure() installed (a test's or an embedder's added handler gets the records)."""

    def __init__(self, handler: logging.StreamHandler[TextIO], json_format: bool) -> None:
        self.handler = handler
        self.handlers = [handler]
        self.json_format = json_format
        self.second = -1
        self.prefix = ""

    def ready(self) -> bool:
        return logging.root.handlers == self.handlers and not log.handlers

    def write(self, message: str, fields: dict[str, Any]) -> None:
        created = time.time()
        if self.json_format:
            line = _json_line(created, "INFO", log.name, message, fields)
        else:
            second = int(created)
            if second != self.second:  # time.strftime once a second, not per line
                self.second = second
                self.prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            msecs = int((created - second) * 1000)
            line = f"{self.prefix},{msecs:03d} INFO {log.name}: {message}"
        handler = self.handler
        handler.acquire()
        try:
            handler.stream.write(line + handler.terminator)
            handler.flush()
        except Exception:  # as logging does: a broken stream never fails the request
            handler.handleError(logging.makeLogRecord({"msg": message}))
        finally:
            handler.release()


_lines: RequestLines | None = None


def _json_line(created: float, level: str, name: str, message: str, fields: Any) -> str:
    entry: dict[str, Any] = {
        "time": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "logger": name,
        "message": message,
    }
    entry.update(fields)
    return json.dumps(entry, default=str)


def configure(settings: Settings, stream: TextIO = sys.stdout) -> None:
    """Send logs to `stream` in the configured format; the app's own at LOG_LEVEL."""
    logging.getLogger("tasks_api").setLevel(settings.log_level)
    # On the root logger, so libraries' warnings come out in the same format; replaced,
    # not added to, when an app is created again in the same process.
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "tasks_api", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.tasks_api = True  # type: ignore[attr-defined]
    if settings.log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    global _lines
    _lines = RequestLines(handler, settings.log_format == "json")


def init_app(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_finish)


def request_id() -> str:
    """This request's id: the router's `X-Request-ID` when it is sane, else a new one."""
    state = current_globals()
    rid: str | None = state.get("request_id")
    if rid is None:
        # From the environ: the Headers view raises and catches a KeyError when absent.
        sent = current_request().environ.get("HTTP_X_REQUEST_ID", "")
        rid = state.request_id = sent if REQUEST_ID.fullmatch(sent) else new_request_id()
    return rid


def new_request_id() -> str:
    """32 random hex digits, as a UUID's hex without its fixed bits (a fourth of uuid4's
    cost)."""
    return secrets.token_hex(16)


def _start() -> None:
    current_globals().started = time.perf_counter()


def _finish(response: Response) -> Response:
    rid = request_id()
    response.headers["X-Request-ID"] = rid
    if not log.isEnabledFor(logging.INFO):
        return response
    req, started = current_request(), current_globals().get("started")
    duration = round((time.perf_counter() - started) * 1000, 2) if started is not None else None
    rule = req.url_rule
    route = rule.rule if rule is not None else "<no route>"
    method, status = req.method, response.status_code
    fields = {
        "method": method,
        "route": route,
        "status": status,
        "duration_ms": duration,
        "request_id": rid,
    }
    if _lines is not None and _lines.ready():
        _lines.write(f"{method} {route} {status} {duration}ms request_id={rid}", fields)
    else:
        log.info("%s %s %s %sms request_id=%s", method, route, status, duration, rid, extra=fields)
    return response
