"""Whether a request has arrived: its head, then its body however it is framed.

The worker's poller thread (tasks_api/server.py) reads requests without blocking and
hands one to a thread only once all of it is there, so that no thread ever waits for a
client. `Arrival` looks at the bytes read so far and says whether the request is
complete, or why it will never be served (`Refused`: a status and a detail). It only
finds where the request ends; gunicorn's parser then reads it from memory and rejects
what is malformed in the head itself (a bad header, two Content-Length...), so a head
it cannot frame is handed over as complete.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gunicorn.http.body import CHUNK_EXT_RE

from . import MAX_BODY_BYTES

# A head larger than this is refused (431) rather than held in memory while it arrives.
# gunicorn's own limits (8 KiB a field, 100 fields) allow about 800 KiB; browsers send a
# few KiB.
HEAD_LIMIT = 64 * 1024
# A chunked body's framing (its chunk-size lines and trailers) may add this much to its
# data: one chunk per few bytes of data is not how any client sends a body.
FRAMING_LIMIT = 64 * 1024

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([^\r\n]*?)[ \t]*(?=\r\n)", re.I)
_TRANSFER_ENCODING = re.compile(rb"\r\ntransfer-encoding:[ \t]*([^\r\n]*?)[ \t]*(?=\r\n)", re.I)
_EXPECT_CONTINUE = re.compile(rb"\r\nexpect:[ \t]*100-continue[ \t]*\r\n", re.I)
_ORIGIN = re.compile(rb"\r\norigin:[ \t]*([^\r\n]*?)[ \t]*(?=\r\n)", re.I)
_PREFLIGHT = re.compile(rb"\r\naccess-control-request-method:", re.I)


class Refused(Exception):
    """The request will not be served: answer `status` with `detail`, then close."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail


TOO_LARGE = f"The body is larger than {MAX_BODY_BYTES // 1024} KiB."
MALFORMED_CHUNKS = "The chunked request body is malformed."


@dataclass
class Arrival:
    """What is known of the request arriving on a connection, as its bytes come in."""

    line_limit: int  # a chunk-size line's (gunicorn's limit_request_field_size)
    head_end: int = -1  # where the body begins, once the head is complete
    length: int | None = None  # the body's Content-Length
    chunked: bool = False
    expects_continue: bool = False  # `Expect: 100-continue` (HTTP/1.1)
    end: int = -1  # where the request ends, once it has arrived
    _next_chunk: int = 0  # where the next chunk-size line of a chunked body begins
    _data: int = 0  # the chunked body's data so far

    def complete(self, received: bytes | bytearray) -> bool:
        """Whether all of the request is in `received`; raises Refused if it never will be."""
        if self.head_end < 0 and not self._head(received):
            return False
        if self.length is not None:
            if len(received) - self.head_end < self.length:
                return False
            self.end = self.head_end + self.length
        elif self.chunked:
            return self._chunks(received)
        else:
            self.end = self.head_end
        return True

    def _head(self, received: bytes | bytearray) -> bool:
        end = received.find(b"\r\n\r\n")
        if end < 0:
            # A bare LF ends a head too, as far as waiting goes: the parser answers 400.
            if b"\n\n" in received or b"\n\r\n" in received:
                self.head_end = len(received)
                return True
            if len(received) >= HEAD_LIMIT:
                raise Refused(431, f"The request head is larger than {HEAD_LIMIT // 1024} KiB.")
            return False
        if end + 4 > HEAD_LIMIT:
            raise Refused(431, f"The request head is larger than {HEAD_LIMIT // 1024} KiB.")
        self.head_end = end + 4
        head = received[: end + 2]
        http11 = head[: head.find(b"\r\n")].endswith(b" HTTP/1.1")
        lengths = _CONTENT_LENGTH.findall(head)
        codings = [
            coding.strip(b" \t").lower()
            for value in _TRANSFER_ENCODING.findall(head)
            for coding in value.split(b",")
        ]
        if codings:
            # Framed by chunks only when chunked comes last, once, with no length and in
            # HTTP/1.1; anything else the parser refuses from the head alone.
            self.chunked = (
                codings[-1] == b"chunked"
                and codings.count(b"chunked") == 1
                and not lengths
                and http11
            )
        elif len(lengths) == 1 and lengths[0].isdigit():
            self.length = int(lengths[0])
            if self.length > MAX_BODY_BYTES:
                raise Refused(413, TOO_LARGE)
        self.expects_continue = http11 and bool(_EXPECT_CONTINUE.search(head))
        self._next_chunk = self.head_end
        return True

    def _chunks(self, received: bytes | bytearray) -> bool:
        """Follow the chunks (RFC 9112 section 7.1) as gunicorn's ChunkedReader reads them."""
        at = self._next_chunk
        while True:
            line_end = received.find(b"\r\n", at)
            if line_end < 0:
                if len(received) - at > self.line_limit:
                    raise Refused(400, MALFORMED_CHUNKS)
                return False
            if line_end - at > self.line_limit:
                raise Refused(400, MALFORMED_CHUNKS)
            size = _chunk_size(received[at:line_end])
            if size == 0:
                return self._trailers(received, line_end + 2)
            if self._data + size > MAX_BODY_BYTES:
                raise Refused(413, TOO_LARGE)
            data_end = line_end + 2 + size
            if len(received) < data_end + 2:
                return False
            if received[data_end : data_end + 2] != b"\r\n":
                raise Refused(400, MALFORMED_CHUNKS)
            self._data += size
            at = self._next_chunk = data_end + 2
            if at - self.head_end - self._data > FRAMING_LIMIT:
                raise Refused(400, MALFORMED_CHUNKS)

    def _trailers(self, received: bytes | bytearray, start: int) -> bool:
        if len(received) < start + 2:
            return False
        if received[start : start + 2] == b"\r\n":
            self.end = start + 2
            return True
        end = received.find(b"\r\n\r\n", start)
        if end < 0:
            if len(received) - start > FRAMING_LIMIT:
                raise Refused(400, MALFORMED_CHUNKS)
            return False
        self.end = end + 4  # the trailer fields themselves the parser checks
        return True


def _chunk_size(line: bytes | bytearray) -> int:
    size, semicolon, extension = line.partition(b";")
    if semicolon:
        if b"\r" in extension or not CHUNK_EXT_RE.fullmatch(b";" + extension):
            raise Refused(400, MALFORMED_CHUNKS)
        size = size.rstrip(b" \t")
    if not size or size.strip(b"0123456789abcdefABCDEF"):
        raise Refused(400, MALFORMED_CHUNKS)
    return int(size, 16)


def origin(received: bytes | bytearray) -> str | None:
    """The request's Origin, if its head (complete or not) names one."""
    head_end = received.find(b"\r\n\r\n")
    found = _ORIGIN.search(received, 0, head_end + 2 if head_end >= 0 else len(received))
    return found.group(1).decode("latin-1") if found else None


def preflight(received: bytes | bytearray) -> bool:
    """Whether the request is a CORS preflight: OPTIONS, asking for a method."""
    if not received.startswith(b"OPTIONS "):
        return False
    head_end = received.find(b"\r\n\r\n")
    return bool(_PREFLIGHT.search(received, 0, head_end + 2 if head_end >= 0 else len(received)))
