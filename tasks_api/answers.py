"""The HTTP server's own answers: to a request it refuses or could not finish, a problem+json
like the app's, with a request id and, to an allowed origin, the CORS headers; to a CORS
preflight of such a request, a yes (the browser then sends it and can read why); and the
log line of each, which names no URL or query string.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from gunicorn.http import errors as http_errors
from werkzeug.exceptions import RequestTimeout

from . import API_CSP, CORS_ALLOW_HEADERS
from .logs import REQUEST_ID

log = logging.getLogger("tasks_api.request")

# RFC 9110's names where Python's HTTPStatus still has older ones.
_TITLES = {413: "Content Too Large", 414: "URI Too Long", 422: "Unprocessable Content"}
# The app's own (tasks_api._security_headers), for answers it never sees.
SECURITY_HEADERS = f"X-Content-Type-Options: nosniff\r\nContent-Security-Policy: {API_CSP}\r\n"

# gunicorn's exceptions, by what the client did wrong.
_REQUEST_LINE = (
    http_errors.InvalidRequestLine,
    http_errors.InvalidRequestMethod,
    http_errors.InvalidHTTPVersion,
)
_HEADER = (
    http_errors.InvalidHeader,
    http_errors.InvalidHeaderName,
    http_errors.ObsoleteFolding,
    http_errors.InvalidSchemeHeaders,
)
_CHUNKS = (
    http_errors.InvalidChunkSize,
    http_errors.ChunkMissingTerminator,
    http_errors.InvalidChunkExtension,
)


def describe(exc: BaseException, cfg: Any) -> tuple[int, str]:
    """The status and a detail for the client; never the request's own bytes."""
    if isinstance(exc, RequestTimeout):  # the server's ReadTimeout
        return 408, str(exc.description)
    if isinstance(exc, http_errors.LimitRequestLine):
        return 414, (
            f"The request line is longer than {cfg.limit_request_line + 2} bytes; "
            "shorten the URL (for a list, send fewer or shorter query parameters)."
        )
    if isinstance(exc, http_errors.LimitRequestHeaders):
        return 431, (
            f"A header field is longer than {cfg.limit_request_field_size - 2} bytes, or "
            f"there are more than {cfg.limit_request_fields} header fields."
        )
    if isinstance(exc, _REQUEST_LINE):
        return 400, "The request line is not valid HTTP/1.1 (method, target and version)."
    if isinstance(exc, http_errors.InvalidHeader) and "bare LF" in str(exc):
        return 400, "Lines of the request head must end with CRLF; a bare LF was sent."
    if isinstance(exc, _HEADER):
        return 400, (
            "A header field is malformed, or conflicts with another (such as "
            "Content-Length and Transfer-Encoding together, or two Content-Length)."
        )
    if isinstance(exc, _CHUNKS):
        return 400, "The chunked request body is malformed."
    if isinstance(exc, http_errors.UnsupportedTransferCoding):
        return 501, "This Transfer-Encoding is not supported; send the body as is or chunked."
    if isinstance(exc, http_errors.ExpectationFailed):
        return 417, "Only `Expect: 100-continue` is supported."
    if isinstance(exc, http_errors.ForbiddenProxyRequest):
        return 403, "Forwarding headers are not accepted from this address."
    if isinstance(exc, http_errors.ParseException):
        return 400, "The request is not valid HTTP/1.1."
    if isinstance(exc, SystemExit):  # a sync worker aborted in the middle of a request
        return 500, "The request took too long and was stopped; retry it."
    return 500, "An unexpected error occurred. Quote the request id when reporting it."


def problem_response(status: int, detail: str, request_id: str, headers: str = "") -> bytes:
    """A whole HTTP/1.1 response carrying an RFC 9457 problem; the connection closes.
    `headers`: more header lines, each ending with CRLF (CORS)."""
    title = _TITLES.get(status) or HTTPStatus(status).phrase
    body = json.dumps(
        {
            "type": "about:blank",
            "title": title,
            "status": status,
            "detail": detail,
            "request_id": request_id,
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status} {title}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/problem+json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Request-ID: {request_id}\r\n" + SECURITY_HEADERS + headers + "\r\n"
    )
    return head.encode("latin-1") + body


def preflight_response(origin: str, request_id: str) -> bytes:
    """A CORS preflight's yes, from the server itself; the connection closes."""
    head = (
        "HTTP/1.1 204 No Content\r\n"
        "Connection: close\r\n"
        f"Access-Control-Allow-Origin: {origin}\r\n"
        "Vary: Origin\r\n"
        "Access-Control-Allow-Methods: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n"
        f"Access-Control-Allow-Headers: {', '.join(CORS_ALLOW_HEADERS)}\r\n"
        f"X-Request-ID: {request_id}\r\n" + SECURITY_HEADERS + "\r\n"
    )
    return head.encode("latin-1")


def sent_request_id(req: Any) -> str | None:
    for name, value in getattr(req, "headers", None) or ():
        if name == "X-REQUEST-ID" and REQUEST_ID.fullmatch(value):
            return str(value)
    return None


def log_rejected(
    method: str | None, status: int, detail: str, request_id: str, exc: BaseException | None
) -> None:
    """One line, like the app's request lines; the route is unknown, the URL never shown."""
    route = "<server>"  # answered by the HTTP server, before or instead of the app
    unexpected = status == 500 and exc is not None and not isinstance(exc, SystemExit)
    log.log(
        logging.ERROR if status >= 500 else logging.INFO,
        "%s %s %s %s request_id=%s",
        method or "-",
        route,
        status,
        detail,
        request_id,
        # A failure of the server's own code: its traceback, for whoever fixes it.
        exc_info=exc if unexpected else None,
        extra={"method": method, "route": route, "status": status, "request_id": request_id},
    )
