"""The gunicorn worker: threads per process, deadlines, problem+json from the server.

`gunicorn.conf.py` selects it (`worker_class = "tasks_api.server.Worker"`). It is
gunicorn's gthread worker (a poller thread accepts, a pool of threads runs requests)
with these changes, each for a promise of API.md or the service's throughput:

- A thread never waits for a client. The poller thread reads each request whole
  before a thread gets it, however its body is framed (Content-Length, chunked, after
  `Expect: 100-continue`, which it answers itself); `framing.Arrival` says when it is
  all there. A request not arrived READ_TIMEOUT after it began (its body: after its
  head) is answered 408; an idle connection is just closed. What can never be served
  is refused at once: a head over 64 KiB (431), a body over 64 KiB, by its length or
  by its chunks (413), malformed chunks or a request cut short by the client's close
  (400). Idle, trickling and pipelining clients hold no thread.
- Nor does a thread wait to write: what the client has not taken yet of an answer, the
  poller sends, and a client that takes none of it for WRITE_TIMEOUT is dropped.
- Nothing is written after an answer has begun. After an answer the connection is
  kept alive or closed; a close ends our side first, then reads and discards what the
  client still sends (a body the answer made pointless) within LINGER_* bounds, so
  that the client reads the answer instead of a reset (nginx's lingering close).
- On SIGTERM the worker accepts every connection still waiting in the kernel's accept
  queue before it stops listening, and answers them: a deploy loses no request.
- A worker whose threads are all taken leaves new connections to a worker with a free
  one. gunicorn's workers all accept from one queue, each as fast as it can, and a
  kept-alive connection stays with the worker that took it: 64 clients connecting at
  once often all landed in one worker, which then served them with one process (one
  GIL) while the other idled, at half the throughput (benoitc/gunicorn#3433). A busy
  worker stops listening and looks at the queue every ACCEPT_LOOK seconds; connections
  waiting at ACCEPT_LOOKS looks in a row have found no free worker, and it takes them.
  Connections opened while only one worker was up still stay with it, so a kept-alive
  connection is closed (`Connection: close`) after KEEPALIVE_REQUESTS requests, as
  nginx does: the client reconnects, and lands where there is room.
- The server's own errors (400, 408, 413, 414, 431, and the 500 of a worker aborted
  on timeout) are problem+json with a request id, like the app's, with the app's CORS
  headers for an allowed Origin; each says `Connection: close` (tasks_api/answers.py,
  with their log lines, which name no URL or query string).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import selectors
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from flask import Flask
from gunicorn.http import errors as http_errors
from gunicorn.util import write_nonblock
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, TConn, ThreadWorker
from werkzeug.exceptions import BadRequest, RequestTimeout

from . import CORS_EXPOSE_HEADERS, answers, framing, logs
from .framing import MALFORMED_CHUNKS, Arrival, Refused

log = logging.getLogger("tasks_api.request")

# How long a request may take to arrive: its head from the connection's first moment
# (or, on a kept-alive connection, from its first byte), then its body from the head's
# end. Generous for a phone on a slow network sending at most 64 KiB; short enough that
# a client holding connections open costs little.
READ_TIMEOUT = 5.0
# How long a response may wait for the client to take any of it. A client that sends
# requests and reads nothing (pipelining, say) is dropped then; it holds no thread
# meanwhile, as the poller thread sends what the client has not taken yet.
WRITE_TIMEOUT = 10.0
# A response is held for the poller thread up to this size; beyond it (a streamed body)
# its thread sends the rest, waiting at most WRITE_TIMEOUT each time the client stalls.
OUTPUT_HELD = 2 * 1024 * 1024
# After an answer, the server closes its side and reads and discards what the client is
# still sending (a body the answer made pointless), so that the close does not reset the
# connection before the client has read the answer (nginx's lingering_close): at most
# LINGER_TIME in all, LINGER_BYTES, and LINGER_QUIET without a byte.
LINGER_TIME = 5.0
LINGER_QUIET = 1.0
LINGER_BYTES = 8 * 1024 * 1024
RECV_BYTES = 64 * 1024
# How often a worker with no free thread looks for connections no other worker took,
# and at how many looks in a row it must find some waiting before it takes them: a queue
# seen at two looks was often two connections that free workers were taking as they came
# (the busy worker then held one until its thread was free); four in a row, 15 ms of
# waiting at least, is none taking them. Short beside a request, long beside the
# moments a free worker's poller may take to wake on a loaded machine.
ACCEPT_LOOK = 0.005
ACCEPT_LOOKS = 4
# nginx's default for keepalive_requests: a reconnect per 1000 requests costs nothing
# measurable, and a busy connection moves within a minute or so.
KEEPALIVE_REQUESTS = 1000
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class ReadTimeout(RequestTimeout):
    """The request (its head, or its declared body) did not arrive in time."""

    description = f"The request did not arrive within {READ_TIMEOUT:g} s; send it again."


class MalformedBody(BadRequest):
    """gunicorn could not read the body the app asked for (a bad trailer field)."""

    description = MALFORMED_CHUNKS


class _Arrived:
    """The socket as the request parser sees it in a thread: the poller thread has read
    the whole request, so a read finds its bytes at once or it is a request framed in a
    way the poller did not foresee, answered 408; it never waits."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.expired = False

    def recv(self, size: int) -> bytes:
        try:
            return self.sock.recv(size)  # non-blocking in the thread too
        except BlockingIOError:
            self.expired = True
            raise ReadTimeout() from None

    # gunicorn's body drain bounds its reads through these: nothing waits here anyway.
    def gettimeout(self) -> float:
        return 0.0

    def settimeout(self, value: float | None) -> None:
        pass


class _Output:
    """The socket as a response is written to it, never blocking: what the client has
    not taken yet is held, for the poller thread to send."""

    def __init__(self, sock: socket.socket, *, joins_head: bool = False) -> None:
        self.sock = sock
        self.held: deque[memoryview] = deque()
        self.held_bytes = 0
        self.written = False  # an answer has begun: nothing else may be written
        self.stalled = False  # the client took nothing for WRITE_TIMEOUT
        # gunicorn writes an answer's head, then its body: with `joins_head`, the head
        # waits and goes with the body, in one send and one TCP segment instead of two
        # (`end` sends it alone if no body comes).
        self.joins_head = joins_head
        self.head = b""

    def sendall(self, data: bytes) -> None:
        if self.joins_head and not self.written:
            self.written = True
            self.head = data
            return
        self.written = True
        if self.head:
            data, self.head = self.head + data, b""
        view = memoryview(data)
        if not self.held:
            view = view[self._send(view) :]
        if view:
            self.held.append(view)
            self.held_bytes += len(view)
            if self.held_bytes > OUTPUT_HELD:
                self._send_down_to(OUTPUT_HELD)

    def send(self, data: bytes) -> int:
        self.sendall(data)
        return len(data)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        file.seek(offset)
        sent = 0
        while count is None or sent < count:
            block = file.read(RECV_BYTES if count is None else min(RECV_BYTES, count - sent))
            if not block:
                break
            self.sendall(block)
            sent += len(block)
        return sent

    def end(self) -> None:
        """The answer is complete: send a head that is still waiting (no body came)."""
        if self.head:
            self.sendall(b"")

    def flush(self) -> int:
        """Send what the client takes now; return how much that was."""
        sent = 0
        while self.held:
            n = self._send(self.held[0])
            if not n:
                break
            sent += n
            self.held_bytes -= n
            self.held[0] = self.held[0][n:]
            if not self.held[0]:
                self.held.popleft()
        return sent

    def _send(self, view: memoryview) -> int:
        try:
            return self.sock.send(view)
        except BlockingIOError:
            return 0

    def _send_down_to(self, size: int) -> None:
        writable = select.poll()
        writable.register(self.sock, select.POLLOUT)
        while self.held_bytes > size:
            if not self.flush() and not writable.poll(WRITE_TIMEOUT * 1000):
                self.stalled = True
                raise BrokenPipeError(errno.EPIPE, "the client stopped reading")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


class _Input:
    """wsgi.input: gunicorn's body, whose framing errors the app answers with a 400. The
    poller thread has checked the framing already; a bad trailer field it leaves to this."""

    def __init__(self, body: Any) -> None:
        self.body = body

    def read(self, size: int | None = None) -> bytes:
        data: bytes = self._reading(self.body.read, size)
        return data

    def readline(self, size: int | None = None) -> bytes:
        line: bytes = self._reading(self.body.readline, size)
        return line

    def readlines(self, hint: int | None = None) -> list[bytes]:
        lines: list[bytes] = self._reading(self.body.readlines, hint)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")

    @staticmethod
    def _reading(method: Callable[[int | None], Any], size: int | None) -> Any:
        try:
            return method(size)
        except http_errors.ParseException:
            raise MalformedBody() from None


class Connection(TConn):  # type: ignore[misc]
    """gunicorn's connection, with what the poller thread knows of it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.served = 0
        self.reader: _Arrived | None = None
        self.output: _Output | None = None  # the answer being written
        self.keepalive = False  # what follows the answer once it is written
        self.deadline = 0.0  # while writing or lingering: when the client has been idle too long
        self.linger_end = 0.0
        self.lingered = 0
        self.next_request(b"")

    def next_request(self, received: bytes) -> None:
        self.received = bytearray(received)  # the request arriving, and what follows it
        self.arrival = Arrival(self.cfg.limit_request_field_size)
        self.continued = False  # `100 Continue` sent
        self.origin: str | None = None
        self.preflight = False  # a CORS preflight (OPTIONS asking for a method)

    def init(self) -> None:
        """Called by the thread before each request: hand the parser what the poller read."""
        if not self.initialized:
            super().init()
            self.reader = _Arrived(self.sock)
            self.parser.unreader.sock = self.reader
        self.sock.setblocking(False)
        if self.received:
            self.parser.unreader.unread(bytes(self.received))
            self.received = bytearray()


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
        # listeners with a queue at the last looks: how many looks in a row
        self.waiting: dict[socket.socket, int] = {}
        self.writing: set[Connection] = set()  # answers the poller is sending
        self.lingering: set[Connection] = set()  # closing: what the client sends is discarded
        self.serving = threading.local()  # the connection each thread is serving
        self.cors_origins: tuple[str, ...] = ()

    def init_process(self) -> None:
        # gunicorn reads a setting through Config.__getattr__ (a lookup and a call), a
        # dozen times a request in its parser. Settings are final once the worker runs:
        # each value is put where attribute lookup finds it first. Config's properties
        # (worker_class, is_ssl, ...) still win over these, as data descriptors do.
        cfg = self.cfg
        for name, setting in cfg.settings.items():
            if not hasattr(type(cfg), name):
                object.__setattr__(cfg, name, setting.get())  # past Config.__setattr__
        super().init_process()

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        super().check_config(cfg, log)
        # The poller reads request heads as bytes off the socket: plain HTTP/1.1 only,
        # as behind a PaaS router (which ends TLS and speaks HTTP/1.1 to the app).
        if cfg.is_ssl or "h2" in (cfg.http_protocols or ()):
            raise SystemExit("tasks_api.server.Worker serves plain HTTP/1.1: no TLS, no HTTP/2")

    # --- requests read by the poller thread -----------------------------------------------

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
        self._await_request(conn)
        return True

    def on_client_socket_readable(self, conn: Connection, client: socket.socket) -> None:
        """A kept-alive connection speaks again: read its next request."""
        self.keepalived_conns.remove(conn)
        self._await_request(conn, registered=True)
        self._read_request(conn, client)

    def _await_request(self, conn: Connection, *, registered: bool = False) -> None:
        """Wait for a request on the connection; `registered`: it is in the poller already
        (a kept-alive one), with the same event, so only its callback changes, with no
        system call."""
        # The deque stays sorted by timeout: every entry gets the same delay.
        conn.timeout = time.monotonic() + READ_TIMEOUT
        self.pending_conns.append(conn)
        read = partial(self._read_request, conn)
        if registered:
            self.poller.modify(conn.sock, selectors.EVENT_READ, read)
        else:
            conn.sock.setblocking(False)
            self.poller.register(conn.sock, selectors.EVENT_READ, read)

    def _stop_awaiting(self, conn: Connection) -> None:
        self.poller.unregister(conn.sock)
        self.pending_conns.remove(conn)

    def _read_request(self, conn: Connection, _client: object) -> None:
        data = _received(conn.sock)
        if data is None:
            return
        if data:
            conn.received += data
            self._examine(conn)
            return
        self._stop_awaiting(conn)
        if conn.received:  # the client ended its side with half a request
            self._refuse(conn, 400, "The request ended before all of it was sent.")
        else:
            self._close(conn)

    def _examine(self, conn: Connection) -> None:
        """Hand the request to a thread once it has arrived, or refuse it."""
        arrival = conn.arrival
        had_head = arrival.head_end >= 0
        try:
            complete = arrival.complete(conn.received)
        except Refused as refused:
            self._stop_awaiting(conn)
            self._refuse(conn, refused.status, refused.detail)
            return
        if complete:
            self._stop_awaiting(conn)
            if self.cors_origins:  # read only for the CORS headers of the server's answers
                conn.origin = framing.origin(conn.received)
                conn.preflight = framing.preflight(conn.received)
            conn.data_ready = True
            self.enqueue_req(conn)
        elif arrival.head_end >= 0 and not had_head:
            # The body gets READ_TIMEOUT of its own from the head's end.
            self.pending_conns.remove(conn)
            conn.timeout = time.monotonic() + READ_TIMEOUT
            self.pending_conns.append(conn)
            if arrival.expects_continue and not conn.continued:
                conn.continued = True
                try:
                    sent = conn.sock.send(CONTINUE)
                except OSError:
                    sent = 0
                if sent != len(CONTINUE):
                    self._stop_awaiting(conn)
                    self._close(conn, abort=True)

    def murder_pending(self) -> None:
        """Drop the connections whose request has not arrived within READ_TIMEOUT (the ones
        that sent part of it get a 408 first, the idle ones are just closed), whose client
        has taken none of its answer within WRITE_TIMEOUT, or that have lingered enough."""
        now = time.monotonic()
        while self.pending_conns and self.pending_conns[0].timeout <= now:
            conn = self.pending_conns.popleft()
            self.poller.unregister(conn.sock)
            if conn.received:
                request_id = logs.new_request_id()
                answers.log_rejected(None, 408, ReadTimeout.description, request_id, None)
                cors = self._cors(framing.origin(conn.received))
                with contextlib.suppress(OSError):
                    conn.sock.send(
                        answers.problem_response(408, ReadTimeout.description, request_id, cors)
                    )
            self._close(conn)
        for conn in [c for c in self.writing if c.deadline <= now]:
            self.writing.remove(conn)
            self.poller.unregister(conn.sock)
            self._close(conn, abort=True)
        for conn in [c for c in self.lingering if min(c.deadline, c.linger_end) <= now]:
            self._stop_lingering(conn)

    def _keepalive_after(self, conn: Connection, keepalive: bool) -> bool:
        if conn.reader is not None and conn.reader.expired:
            return False
        try:
            return bool(super()._keepalive_after(conn, keepalive))
        except Exception:  # the rest of a body the app did not read is malformed: close
            return False

    # --- answers: sent without holding a thread, then a kept-alive wait or a lingering close

    def handle(self, conn: Connection) -> Any:
        self.serving.conn = conn
        try:
            return super().handle(conn)
        finally:
            self.serving.conn = None

    def handle_request(self, req: Any, conn: Connection) -> bool:
        conn.served += 1
        if conn.served >= KEEPALIVE_REQUESTS:
            req.must_close = True
        # The poller sent `100 Continue` if the client waited for it.
        req._expected_100_continue = False
        output = conn.output = _Output(conn.sock, joins_head=True)
        sock, conn.sock = conn.sock, output
        try:
            keepalive = bool(super().handle_request(req, conn))
            output.end()
            return keepalive
        except BaseException:
            with contextlib.suppress(OSError):
                output.end()
            raise
        finally:
            conn.sock = sock

    def finish_request(self, conn: Connection, fs: Any) -> None:
        """A thread is done with the connection (called on the poller thread)."""
        try:
            keepalive = not fs.cancelled() and bool(fs.result())
        except Exception:
            keepalive = False
        self._after_answer(conn, keepalive)

    def _refuse(self, conn: Connection, status: int, detail: str) -> None:
        """Answer a request the app will not see, and close."""
        request_id = logs.new_request_id()
        answers.log_rejected(None, status, detail, request_id, None)
        cors = self._cors(framing.origin(conn.received))
        conn.output = _Output(conn.sock)
        try:
            conn.output.sendall(answers.problem_response(status, detail, request_id, cors))
        except OSError:
            self._close(conn, abort=True)
            return
        self._after_answer(conn, keepalive=False)

    def _after_answer(self, conn: Connection, keepalive: bool) -> None:
        output = conn.output
        if conn.sock.fileno() < 0:  # closed by gunicorn after a response that failed
            self.nr_conns -= 1
        elif output is not None and output.stalled:
            self._close(conn, abort=True)
        elif output is not None and output.held:
            conn.keepalive = keepalive
            conn.deadline = time.monotonic() + WRITE_TIMEOUT
            self.writing.add(conn)
            self.poller.register(conn.sock, selectors.EVENT_WRITE, partial(self._write, conn))
        else:
            conn.output = None
            self._after_written(conn, keepalive)

    def _write(self, conn: Connection, _client: object) -> None:
        assert conn.output is not None
        try:
            if conn.output.flush():
                conn.deadline = time.monotonic() + WRITE_TIMEOUT
        except OSError:
            conn.output.held.clear()
            conn.keepalive = False
        if not conn.output.held:
            self.writing.remove(conn)
            self.poller.unregister(conn.sock)
            conn.output = None
            self._after_written(conn, conn.keepalive)

    def _after_written(self, conn: Connection, keepalive: bool) -> None:
        if not keepalive:
            self._linger(conn)
            return
        # Whatever the client sent after this request (pipelined) is the next one's start.
        conn.next_request(conn.parser.unreader.take_buffered())
        if conn.received:
            self._await_request(conn)
            self._examine(conn)
            return
        conn.set_timeout()
        if not self.alive:
            conn.timeout = min(conn.timeout, time.monotonic() + STOP_KEEPALIVE_LINGER)
        self.keepalived_conns.append(conn)
        self.poller.register(
            conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn)
        )

    def _linger(self, conn: Connection) -> None:
        """Close once the client has read the answer: end our side first, then read and
        discard what it still sends, until it closes or goes quiet, within bounds."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        now = time.monotonic()
        conn.linger_end = now + LINGER_TIME
        conn.deadline = now + LINGER_QUIET
        conn.lingered = 0
        self.lingering.add(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._discard, conn))

    def _discard(self, conn: Connection, _client: object) -> None:
        data = _received(conn.sock)
        if data is None:
            return
        conn.lingered += len(data)
        conn.deadline = time.monotonic() + LINGER_QUIET
        if not data or conn.lingered > LINGER_BYTES:
            self._stop_lingering(conn)

    def _stop_lingering(self, conn: Connection) -> None:
        self.lingering.remove(conn)
        self.poller.unregister(conn.sock)
        self._close(conn)

    def _close(self, conn: Connection, *, abort: bool = False) -> None:
        """Close and forget; `abort` resets the connection, dropping what was not sent."""
        self.nr_conns -= 1
        if abort:
            with contextlib.suppress(OSError):
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

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

    def _has_free_thread(self) -> bool:
        waiting = len(self.keepalived_conns) + len(self.pending_conns)
        running = self.nr_conns - waiting - len(self.writing) - len(self.lingering)
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
        if self.writing or self.lingering:
            soonest = min(c.deadline for c in (*self.writing, *self.lingering))
            timeout = max(min(timeout, soonest - time.monotonic()), 0.0)
        super().wait_for_and_dispatch_events(timeout)

    def _look(self) -> float:
        """Take what waited in the queue since the last look (no free worker took it);
        return the time until the next look."""
        now = time.monotonic()
        if now >= self.next_look:
            self.next_look = now + ACCEPT_LOOK
            queued = select.select(self.sockets, [], [], 0)[0]
            self.waiting = {listener: self.waiting.get(listener, 0) + 1 for listener in queued}
            for listener, looks in self.waiting.items():
                if looks >= ACCEPT_LOOKS:
                    for _ in range(self.cfg.threads):
                        if not self.accept(listener):
                            break
        return max(self.next_look - now, 0.0)

    # --- the app, with its request id and whether its response has begun -----------------

    def load_wsgi(self) -> None:
        super().load_wsgi()
        app: WSGIApp = getattr(self, "wsgi")  # noqa: B009 (set by gunicorn, untyped)
        flask_app = _flask_app(app)
        settings = flask_app.extensions.get("tasks_api.settings") if flask_app else None
        self.cors_origins = tuple(getattr(settings, "cors_origins", ()))
        engine = flask_app.extensions.get("tasks_api.engine") if flask_app else None
        if engine is not None:
            # Built in the master (preload_app): a connection made before the fork would
            # be shared with it and the other workers. None is, but this worker's pool
            # starts empty whatever happened there (SQLAlchemy's advice for forks).
            engine.dispose(close=False)
        self.wsgi = self._tracked(app)

    def _tracked(self, app: WSGIApp) -> WSGIApp:
        in_flight = self.in_flight

        def tracked(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            # The id the app logs and answers with; chosen here so that an abort can
            # answer with it too.
            sent = environ.get("HTTP_X_REQUEST_ID", "")
            request_id = sent if logs.REQUEST_ID.fullmatch(sent) else logs.new_request_id()
            environ["HTTP_X_REQUEST_ID"] = request_id
            environ["wsgi.input"] = _Input(environ["wsgi.input"])
            sock = environ["gunicorn.socket"]
            entry = _InFlight(getattr(sock, "sock", sock), request_id, environ["REQUEST_METHOD"])
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

    def _cors(self, origin: str | None) -> str:
        """The app's CORS headers, for an answer to an allowed origin."""
        if origin is None or origin not in self.cors_origins:
            return ""
        return (
            f"Access-Control-Allow-Origin: {origin}\r\nVary: Origin\r\n"
            f"Access-Control-Expose-Headers: {', '.join(CORS_EXPOSE_HEADERS)}\r\n"
        )

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        """Answer a request gunicorn could not hand to the app, unless an answer has begun:
        nothing is written after one (the connection then just closes)."""
        conn: Connection | None = getattr(self.serving, "conn", None)
        if conn is not None and conn.output is not None and conn.output.written:
            return
        status, detail = answers.describe(exc, self.cfg)
        request_id = answers.sent_request_id(req) or logs.new_request_id()
        origin = conn.origin if conn is not None else None
        if conn is not None and conn.preflight and self._cors(origin) and status < 500:
            # A browser sends the request itself only after a 2xx preflight: refusing the
            # preflight (a URL too long: 414) left its script a bare network error; the
            # request then gets the problem, which it can read.
            answers.log_rejected(
                "OPTIONS", 204, f"a preflight of a request that is a {status}", request_id, None
            )
            answer = answers.preflight_response(origin or "", request_id)
        else:
            answers.log_rejected(getattr(req, "method", None), status, detail, request_id, exc)
            answer = answers.problem_response(status, detail, request_id, self._cors(origin))
        with contextlib.suppress(OSError):  # the client is gone
            if conn is not None and conn.sock is client:
                conn.output = _Output(client)  # sent, then the close lingers
                conn.output.sendall(answer)
            else:
                write_nonblock(client, answer)

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
                answers.log_rejected(entry.method, 500, detail, entry.request_id, None)
                try:
                    write_nonblock(
                        entry.sock, answers.problem_response(500, detail, entry.request_id)
                    )
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


def _received(sock: socket.socket) -> bytes | None:
    """What a readable socket has (b"": the client closed or failed); None when nothing
    after all."""
    try:
        return sock.recv(RECV_BYTES)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def _flask_app(app: object) -> Flask | None:
    """The Flask app inside whatever wraps it (a middleware keeps what it wraps as `app`,
    `wsgi_app` or the like; a bound method has its object as `__self__`)."""
    for _ in range(10):
        if isinstance(app, Flask):
            return app
        inner = (
            getattr(app, name, None)
            for name in ("app", "application", "wsgi_app", "__wrapped__", "__self__")
        )
        app = next((found for found in inner if found is not None), None)
    return None
