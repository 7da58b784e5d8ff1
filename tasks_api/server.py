"""The gunicorn worker: threads per process, read deadlines, problem+json from the server.

`gunicorn.conf.py` selects it (`worker_class = "tasks_api.server.Worker"`). It is
gunicorn's gthread worker (a poller thread accepts, a pool of threads runs requests)
with five changes, each for a promise of API.md or the service's throughput:

- A thread gets a connection only once its request has arrived: the poller thread
  reads the head, and a declared body of up to 64 KiB, without blocking. Idle
  connections and clients that send a byte at a time hold no thread; a request not
  arrived READ_TIMEOUT after it began is answered 408 (an idle connection is just
  closed). A body the thread reads itself (chunked, larger, after `Expect:
  100-continue`) has READ_TIMEOUT too.
- On SIGTERM the worker accepts every connection still waiting in the kernel's accept
  queue before it stops listening, and answers them: a deploy loses no request.
- A worker whose threads are all taken leaves new connections to a worker with a free
  one. gunicorn's workers all accept from one queue, each as fast as it can, and a
  kept-alive connection stays with the worker that took it: 64 clients connecting at
  once often all landed in one worker, which then served them with one process (one
  GIL) while the other idled, at half the throughput (benoitc/gunicorn#3433). A busy
  worker stops listening and looks at the queue every ACCEPT_LOOK seconds; a connection
  still waiting at its second look has found no free worker, and it takes it then.
  Connections opened while only one worker was up still stay with it, so a kept-alive
  connection is closed (`Connection: close`) after KEEPALIVE_REQUESTS requests, as
  nginx does: the client reconnects, and lands where there is room.
- The server's own errors (malformed request line or header, 414, 431, and the 500 of
  a worker aborted on timeout) are problem+json with a request id, like the app's.
- Its log lines name no URL or query string: only status, what was wrong, request id.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import select
import selectors
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from typing import Any

from gunicorn.http import errors as http_errors
from gunicorn.util import write_nonblock
from gunicorn.workers.gthread import TConn, ThreadWorker
from werkzeug.exceptions import RequestTimeout

log = logging.getLogger("tasks_api.request")

# How long a request may take to arrive: its head from the connection's first moment
# (or, on a kept-alive connection, from its first byte), then its body from the head's
# end. Generous for a phone on a slow network sending at most 64 KiB; short enough that
# a client holding connections open costs little.
READ_TIMEOUT = 5.0
# A body declared this large or smaller (the app's limit, plus one to tell "too large")
# is awaited by the poller too, so a client that announces a body and sends it slowly
# holds no thread either. Larger, chunked or `Expect: 100-continue`: read by the thread.
BODY_AWAIT_BYTES = 64 * 1024 + 1
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d{1,7})[ \t]*\r\n", re.IGNORECASE)
_EXPECT = re.compile(rb"\r\nexpect:", re.IGNORECASE)
# A head this large goes to a thread even unfinished: the parser then reads the rest
# (within READ_TIMEOUT) and answers 431 if it is too large.
HEAD_HANDOFF_BYTES = 64 * 1024
# How often a worker with no free thread looks for connections no other worker took:
# short beside a request, long beside the microseconds a free worker takes to accept.
ACCEPT_LOOK = 0.005
# nginx's default for keepalive_requests: a reconnect per 1000 requests costs nothing
# measurable, and a busy connection moves within a minute or so.
KEEPALIVE_REQUESTS = 1000
# RFC 9110's names where Python's HTTPStatus still has older ones.
_TITLES = {413: "Content Too Large", 414: "URI Too Long", 422: "Unprocessable Content"}
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
SECURITY_HEADERS = (
    "X-Content-Type-Options: nosniff\r\n"
    "Content-Security-Policy: default-src 'none'; frame-ancestors 'none'\r\n"
)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class ReadTimeout(RequestTimeout):
    """The request (its head, or its declared body) did not arrive in time.

    A werkzeug HTTPException, so that when the app is the one reading (the body), its
    error handler answers it as a 408 problem like any other.
    """

    description = f"The request did not arrive within {READ_TIMEOUT:g} s; send it again."


class _DeadlineReader:
    """The socket as the request parser sees it: no read waits past the deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline = float("inf")
        self.expired = False

    def recv(self, size: int) -> bytes:
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.expired = True
            raise ReadTimeout()
        self.sock.settimeout(left)
        try:
            return self.sock.recv(size)
        except TimeoutError:
            self.expired = True
            raise ReadTimeout() from None
        finally:
            self.sock.settimeout(None)

    # gunicorn's body drain bounds its reads through these.
    def gettimeout(self) -> float | None:
        return self.sock.gettimeout()

    def settimeout(self, value: float | None) -> None:
        self.sock.settimeout(value)


class Connection(TConn):  # type: ignore[misc]
    """gunicorn's connection, carrying the bytes the poller thread has read."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.head = b""
        self.served = 0
        self.reader: _DeadlineReader | None = None

    def init(self) -> None:
        """Called by the thread before each request: arm the read deadline, hand the
        parser what the poller read."""
        if not self.initialized:
            super().init()
            self.reader = _DeadlineReader(self.sock)
            self.parser.unreader.sock = self.reader
        assert self.reader is not None
        self.reader.deadline = time.monotonic() + READ_TIMEOUT
        if self.head:
            self.parser.unreader.unread(self.head)
            self.head = b""


@dataclass
class _InFlight:
    """A request the app is running, for the worker to answer if it is aborted."""

    sock: socket.socket
    request_id: str
    method: str
    started: bool = False  # the app has begun its response
    lock: threading.Lock = field(default_factory=threading.Lock)


class Worker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker, changed as the module's docstring says."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_flight: dict[int, _InFlight] = {}
        self.next_look = 0.0
        self.waiting: set[socket.socket] = set()  # listeners with a queue at the last look

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        super().check_config(cfg, log)
        # The poller reads request heads as bytes off the socket: plain HTTP/1.1 only,
        # as behind a PaaS router (which ends TLS and speaks HTTP/1.1 to the app).
        if cfg.is_ssl or "h2" in (cfg.http_protocols or ()):
            raise SystemExit("tasks_api.server.Worker serves plain HTTP/1.1: no TLS, no HTTP/2")

    # --- heads read by the poller thread ------------------------------------------------

    def accept(self, listener: socket.socket) -> bool:
        """Take one connection from the accept queue; False when it is empty."""
        try:
            sock, address = listener.accept()
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return False
            raise
        self.nr_conns += 1
        conn = Connection(self.cfg, sock, address, listener.getsockname())
        self._await_head(conn, register=True)
        return True

    def on_client_socket_readable(self, conn: Connection, client: socket.socket) -> None:
        """A kept-alive connection speaks again: read its next head."""
        self.keepalived_conns.remove(conn)
        self.poller.modify(client, selectors.EVENT_READ, partial(self._read_head, conn))
        self._await_head(conn, register=False)
        self._read_head(conn, client)

    def _await_head(self, conn: Connection, *, register: bool) -> None:
        conn.sock.setblocking(False)
        # The deque stays sorted by timeout: every entry gets the same delay.
        conn.timeout = time.monotonic() + READ_TIMEOUT
        self.pending_conns.append(conn)
        if register:
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._read_head, conn))

    def _read_head(self, conn: Connection, _client: object) -> None:
        try:
            data = conn.sock.recv(HEAD_HANDOFF_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            conn.head += data
            if not _arrived(conn.head):
                return
        self.poller.unregister(conn.sock)
        self.pending_conns.remove(conn)
        if not data:  # the client left
            self.nr_conns -= 1
            conn.close()
            return
        conn.data_ready = True
        self.enqueue_req(conn)

    def murder_pending(self) -> None:
        """Drop the connections whose request has not arrived within READ_TIMEOUT: the
        ones that sent part of it get a 408 first, the idle ones are just closed."""
        now = time.monotonic()
        while self.pending_conns and self.pending_conns[0].timeout <= now:
            conn = self.pending_conns.popleft()
            self.poller.unregister(conn.sock)
            self.nr_conns -= 1
            if conn.head:
                request_id = uuid.uuid4().hex
                _log_rejected(None, 408, ReadTimeout.description, request_id, None)
                with contextlib.suppress(OSError):
                    conn.sock.send(problem_response(408, ReadTimeout.description, request_id))
            conn.close()

    def _keepalive_after(self, conn: Connection, keepalive: bool) -> bool:
        # A request whose body came too late leaves the connection at an unknown point.
        if conn.reader is not None and conn.reader.expired:
            return False
        try:
            return bool(super()._keepalive_after(conn, keepalive))
        except ReadTimeout:
            return False

    # --- SIGTERM: answer the accept queue, then stop listening ---------------------------

    def set_accept_enabled(self, enabled: bool) -> None:
        if enabled or self.alive:
            self._listen(enabled and self._has_free_thread())
            return
        # Stopping. Connections the kernel accepted for us wait in the queue that every
        # worker shares; it is reset when the last worker closes the socket. Take them
        # all, then close, so that new connections are refused rather than queued.
        for listener in self.sockets:
            listener.setblocking(False)
            while self.accept(listener):
                pass
        self._listen(False)
        for listener in self.sockets:
            listener.close()

    # --- balance: a busy worker leaves new connections to a free one; connections move ---

    def handle_request(self, req: Any, conn: Connection) -> bool:
        conn.served += 1
        if conn.served >= KEEPALIVE_REQUESTS:
            req.must_close = True
        return bool(super().handle_request(req, conn))

    def _has_free_thread(self) -> bool:
        running = self.nr_conns - len(self.keepalived_conns) - len(self.pending_conns)
        return bool(running < self.cfg.threads)

    def _listen(self, enabled: bool) -> None:
        if enabled != self._accepting:
            super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        # gunicorn's own limit (worker_connections) first, as its loop applies it.
        if self.alive and self.nr_conns < self.worker_connections:
            if self._has_free_thread():
                self._listen(True)
                self.waiting.clear()
            else:
                self._listen(False)
                timeout = min(timeout, self._look())
        super().wait_for_and_dispatch_events(timeout)

    def _look(self) -> float:
        """Take what waited in the queue since the last look (no free worker took it);
        return the time until the next look."""
        now = time.monotonic()
        if now >= self.next_look:
            self.next_look = now + ACCEPT_LOOK
            queued = set(select.select(self.sockets, [], [], 0)[0])
            for listener in queued & self.waiting:
                for _ in range(self.cfg.threads):
                    if not self.accept(listener):
                        break
            self.waiting = queued
        return max(self.next_look - now, 0.0)

    # --- the app, with its request id and whether its response has begun -----------------

    def load_wsgi(self) -> None:
        super().load_wsgi()
        app: WSGIApp = getattr(self, "wsgi")  # noqa: B009 (set by gunicorn, untyped)
        self.wsgi = self._tracked(app)

    def _tracked(self, app: WSGIApp) -> WSGIApp:
        in_flight = self.in_flight

        def tracked(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            # The id the app logs and answers with; chosen here so that an abort can
            # answer with it too.
            sent = environ.get("HTTP_X_REQUEST_ID", "")
            request_id = sent if _REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex
            environ["HTTP_X_REQUEST_ID"] = request_id
            entry = _InFlight(environ["gunicorn.socket"], request_id, environ["REQUEST_METHOD"])
            thread = threading.get_ident()
            in_flight[thread] = entry

            def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                with entry.lock:
                    entry.started = True
                return start_response(status, headers, exc_info)

            try:
                return app(environ, start)
            finally:
                in_flight.pop(thread, None)

        return tracked

    # --- the server's own answers ----------------------------------------------------------

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        """Answer a request gunicorn could not hand to the app (or an aborted one)."""
        status, detail = describe(exc, self.cfg)
        request_id = _sent_request_id(req) or uuid.uuid4().hex
        _log_rejected(getattr(req, "method", None), status, detail, request_id, exc)
        try:
            write_nonblock(client, problem_response(status, detail, request_id))
        except OSError:
            pass  # the client is gone

    def handle_abort(self, sig: int, frame: Any) -> None:
        """The arbiter aborts a worker that stopped reporting (its `timeout`): answer the
        requests whose responses have not begun, then exit."""
        self.alive = False
        self.cfg.worker_abort(self)
        for entry in list(self.in_flight.values()):
            if not entry.lock.acquire(timeout=0.1):
                continue
            try:
                if entry.started:
                    continue
                entry.started = True
                detail = "The request took too long and was stopped; retry it."
                _log_rejected(entry.method, 500, detail, entry.request_id, None)
                try:
                    write_nonblock(entry.sock, problem_response(500, detail, entry.request_id))
                    entry.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            finally:
                entry.lock.release()
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        # Not sys.exit: the interpreter would wait for the stuck threads.
        os._exit(1)


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
    if isinstance(exc, ReadTimeout):
        return 408, ReadTimeout.description
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


def _arrived(received: bytes) -> bool:
    """Whether a thread may have the request: its head is complete (so is its body, when
    one of known, small length was declared), or it is too large to wait for here.

    Only decides when to hand over; the parser then reads it as if nothing happened,
    and rejects what is malformed. A head ends with a blank line; a bare LF one too,
    which the parser answers with a 400.
    """
    end = received.find(b"\r\n\r\n")
    if end < 0:
        return b"\n\n" in received or b"\n\r\n" in received or len(received) >= HEAD_HANDOFF_BYTES
    head = received[: end + 2]
    lengths = _CONTENT_LENGTH.findall(head)
    if len(lengths) != 1 or _EXPECT.search(head):
        return True
    length = int(lengths[0])
    return length > BODY_AWAIT_BYTES or len(received) - (end + 4) >= length


def problem_response(status: int, detail: str, request_id: str) -> bytes:
    """A whole HTTP/1.1 response carrying an RFC 9457 problem; the connection closes."""
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
        f"X-Request-ID: {request_id}\r\n" + SECURITY_HEADERS + "\r\n"
    )
    return head.encode("latin-1") + body


def _sent_request_id(req: Any) -> str | None:
    for name, value in getattr(req, "headers", None) or ():
        if name == "X-REQUEST-ID" and _REQUEST_ID.fullmatch(value):
            return str(value)
    return None


def _log_rejected(
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
