"""Bearer token verification: who is calling, and whether the path's user is them."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import math
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import jwt
from flask import Flask
from jwt import PyJWK

from . import errors
from .config import Settings, instance_secret
from .context import current_application, current_request

log = logging.getLogger(__name__)

SECRET_FILE = "auth-secret"
# Clock skew tolerated between the token's issuer and this server.
LEEWAY_SECONDS = 30
# One deadline for a whole fetch of the key set: connecting, the answer's headers, its body.
JWKS_DEADLINE_SECONDS = 3.0
JWKS_MAX_BYTES = 256 * 1024
JWKS_MAX_REDIRECTS = 3
# Even with no unknown `kid`, keys are refetched this often so removed ones stop working.
JWKS_MAX_AGE_SECONDS = 600.0
# A verified token is trusted again without checking for this long (never past its
# `exp`); the cache holds this many tokens, and starts over when full.
VERIFIED_SECONDS = 60.0
VERIFIED_MAX = 4096
# The last second of the year 9999: a NumericDate past it is not a date (RFC 7519 2).
LATEST_TIME = 253_402_300_799


class KeySet:
    """The keys published at a JWKS URL, cached.

    A token whose `kid` is not in the cache triggers a fetch, but at most one fetch
    per cooldown (counted from the end of the last one): tokens with made-up `kid`s
    cannot make the server fetch on every request. A failed fetch, whatever went wrong,
    keeps the keys already held; with no key for the token, that is a 503 (the server
    cannot tell), never a pass and never a 401.

    Safe under threaded workers: one thread fetches at a time, within
    JWKS_DEADLINE_SECONDS. Tokens whose key is held never wait for it (a key due for
    its periodic refresh is used as is while another thread refreshes), and a token
    whose key is missing waits at most the deadline for the fetch in progress.
    """

    def __init__(self, url: str, *, cooldown: float) -> None:
        self.url = url
        self.cooldown = cooldown
        # Replaced whole, never changed in place: readers need no lock.
        self._keys: dict[str | None, PyJWK] = {}
        self._fetched_at = -math.inf  # when the last fetch ended
        self._failed = False
        self._fetching = threading.Lock()

    def key(self, kid: str | None) -> PyJWK:
        key = self._find(kid)
        if key is None and self._due(0.0):
            # Wait for a fetch in progress (bounded by its deadline), or make one.
            if self._fetching.acquire(timeout=JWKS_DEADLINE_SECONDS):
                try:
                    if self._due(0.0):  # not just fetched by the thread we waited for
                        self._fetch()
                finally:
                    self._fetching.release()
            key = self._find(kid)
        elif key is not None and self._due(JWKS_MAX_AGE_SECONDS):
            # Time to refresh: unless another thread is at it already. The key held
            # serves this request either way; a refresh that fails keeps it.
            if self._fetching.acquire(blocking=False):
                try:
                    self._fetch()
                finally:
                    self._fetching.release()
                key = self._find(kid)
        if key is not None:
            return key
        if self._failed or self._fetching.locked():
            wait = max(0.0, self.cooldown - (time.monotonic() - self._fetched_at))
            errors.service_unavailable(
                "The token's signing keys cannot be fetched right now; retry shortly.",
                retry_after=max(1, math.ceil(wait)),
            )
        errors.unauthorized("The token is signed with an unknown key.", token_sent=True)

    def _due(self, age: float) -> bool:
        """Whether a fetch may start: past the cooldown, and the keys older than `age`."""
        return time.monotonic() - self._fetched_at >= max(age, self.cooldown)

    def _find(self, kid: str | None) -> PyJWK | None:
        keys = self._keys
        if kid is None and len(keys) == 1:  # a single key needs no `kid`
            return next(iter(keys.values()))
        return keys.get(kid)

    def _fetch(self) -> None:
        try:
            keys = _signing_keys(json.loads(_download(self.url)))
        except Exception as exc:  # whatever it was, the keys are not to be had
            self._failed = True
            log.warning("fetching keys from %s failed: %s", self.url, _reason(exc))
        else:
            self._keys, self._failed = keys, False
            log.info("fetched %d signing keys from %s", len(keys), self.url)
        finally:
            self._fetched_at = time.monotonic()


class FetchError(Exception):
    """The key server's answer is not a key set (its status, size or redirects)."""


def _reason(exc: Exception) -> str:
    # Our own messages say what was wrong; others' may quote the server's answer.
    return str(exc) if isinstance(exc, FetchError) else type(exc).__name__


def _download(url: str) -> bytes:
    """GET `url` and return its body, all within JWKS_DEADLINE_SECONDS, or raise.

    urllib's timeout bounds each socket operation, not the exchange: a server sending a
    byte every 2 s would hold the request forever. Here a timer shuts the socket down
    when the deadline passes, which ends any read or write in progress.
    """
    deadline = time.monotonic() + JWKS_DEADLINE_SECONDS
    for _ in range(JWKS_MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchError("redirected to a URL that is not http(s)")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError("no answer within the deadline")
        connection_class = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        connection = connection_class(parts.hostname, parts.port, timeout=remaining)
        try:
            # Until connected there is no socket to cut; the timeout bounds each step.
            connection.connect()
            remaining = deadline - time.monotonic()
            if remaining <= 0:  # the name took the whole deadline to resolve
                raise FetchError("no answer within the deadline")
            # The timer holds the socket connected (for https, the TLS one), not the
            # connection: when an answer will close the connection, http.client drops
            # `connection.sock` and reads the body through the response's own file on
            # this same socket (issue 21).
            timer = threading.Timer(remaining, _cut, (connection.sock,))
            timer.start()
            try:
                path = urlunsplit(("", "", parts.path or "/", parts.query, ""))
                connection.request("GET", path, headers={"Accept": "application/json"})
                response = connection.getresponse()
                if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
                    target = urljoin(url, response.getheader("Location", ""))
                    if parts.scheme == "https" and not target.startswith("https://"):
                        raise FetchError("redirected from https to another scheme")
                    url = target
                    continue
                if response.status != 200:
                    raise FetchError(f"HTTP {response.status}")
                body = response.read(JWKS_MAX_BYTES + 1)
                if len(body) > JWKS_MAX_BYTES:
                    raise FetchError(f"key set larger than {JWKS_MAX_BYTES // 1024} KiB")
                if not timer.is_alive():  # cut: what was read may be short
                    raise FetchError("no answer within the deadline")
                return body
            finally:
                timer.cancel()
        finally:
            connection.close()
    raise FetchError("too many redirects")


def _cut(sock: socket.socket) -> None:
    """Shut the socket down: a read or write blocked on it ends at once."""
    with contextlib.suppress(OSError):
        # socket.socket's own shutdown, also under TLS: SSLSocket's would first drop
        # its TLS state from under the thread that is reading.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _signing_keys(document: Any) -> dict[str | None, PyJWK]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK set")
    keys: dict[str | None, PyJWK] = {}
    for data in document["keys"]:
        if not isinstance(data, dict) or data.get("use", "sig") != "sig":
            continue
        try:
            key = PyJWK(data)
        except Exception:  # a key type or curve this server cannot use, or not a key
            continue
        keys[key.key_id] = key
    if not keys:
        raise ValueError("no usable signing key")
    return keys


class Authenticator:
    """Verifies bearer tokens against a shared secret or a key set."""

    def __init__(self, settings: Settings, *, secret: str | None, keyset: KeySet | None) -> None:
        self.secret = secret
        self.keyset = keyset
        self.algorithms = list(settings.auth_jwt_algorithms)
        self.issuer = settings.auth_jwt_issuer
        self.audience = settings.auth_jwt_audience
        # token -> (subject, time until which it is taken as verified)
        self._verified: dict[str, tuple[str, float]] = {}

    def subject(self, token: str) -> str:
        """The token's `sub`, once its signature and claims check out; else a 401.

        A front end sends the same token with every request until it expires; checking
        it once a minute instead of every time saves a fifth of a GET's time (PyJWT's
        decode with HS256; more with RSA or EdDSA keys).
        """
        now = time.time()
        known = self._verified.get(token)
        if known is not None and now < known[1]:
            return known[0]
        claims = self._verify(token)
        subject: str = claims["sub"]
        if len(self._verified) >= VERIFIED_MAX:
            # Emptied rather than trimmed: one call, safe under gunicorn's threaded workers.
            self._verified.clear()
        until = min(claims["exp"] + LEEWAY_SECONDS, now + VERIFIED_SECONDS)
        self._verified[token] = (subject, until)
        return subject

    def _verify(self, token: str) -> dict[str, Any]:
        try:
            key: str | PyJWK
            if self.keyset is not None:
                key = self.keyset.key(jwt.get_unverified_header(token).get("kid"))
            else:
                assert self.secret is not None
                key = self.secret
            claims = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                issuer=self.issuer,
                audience=self.audience,
                leeway=LEEWAY_SECONDS,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": self.audience is not None,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.ExpiredSignatureError:
            errors.unauthorized("The token has expired.", token_sent=True)
        except jwt.MissingRequiredClaimError as exc:
            errors.unauthorized(f"The token has no `{exc.claim}` claim.", token_sent=True)
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
            errors.unauthorized("The token was issued for another service.", token_sent=True)
        except jwt.InvalidTokenError:
            errors.unauthorized("The token is not valid.", token_sent=True)
        # PyJWT takes any value int() takes: 10**400, -5, "123", true.
        for name in ("exp", "nbf", "iat"):
            if name in claims and not _is_time(claims[name]):
                errors.unauthorized(f"The token's `{name}` claim is not a time.", token_sent=True)
        return claims

    def issue(self, user_id: str, lifetime: timedelta) -> str:
        """A token for `user_id`, signed with the shared secret (HS256 mode only)."""
        assert self.secret is not None, "with a key set, tokens come from the auth provider"
        now = datetime.now(UTC)
        claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + lifetime}
        if self.issuer:
            claims["iss"] = self.issuer
        if self.audience:
            claims["aud"] = self.audience
        return jwt.encode(claims, self.secret, algorithm=self.algorithms[0])


def _is_time(value: Any) -> bool:
    """A NumericDate (RFC 7519 2): a JSON number of seconds, from 1970 to the year 9999."""
    return type(value) in (int, float) and 0 <= value <= LATEST_TIME


def init_app(app: Flask, settings: Settings) -> None:
    if settings.auth_disabled:
        log.warning("AUTH_DISABLED=true: anyone can read and change any user's tasks under /api")
        authenticator = None
    elif settings.auth_jwks_url is not None:
        keyset = KeySet(settings.auth_jwks_url, cooldown=settings.auth_jwks_cooldown)
        authenticator = Authenticator(settings, secret=None, keyset=keyset)
        log.info("auth: bearer tokens signed by the keys at %s", settings.auth_jwks_url)
    elif settings.auth_jwt_secret is not None or settings.embedded:
        secret = settings.auth_jwt_secret or instance_secret(Path(app.instance_path), SECRET_FILE)
        authenticator = Authenticator(settings, secret=secret, keyset=None)
        source = "AUTH_JWT_SECRET" if settings.auth_jwt_secret else "the instance's secret"
        log.info("auth: bearer tokens signed with %s", source)
    else:
        # Only under the flask command (settings refuse to serve PostgreSQL without auth):
        # nothing is verified, so nothing is set up.
        return
    app.extensions["tasks_api.auth"] = authenticator


def authorize(user_id: str) -> None:
    """Let the request through only if its bearer token's subject is `user_id`."""
    authenticator: Authenticator | None = current_application().extensions["tasks_api.auth"]
    if authenticator is None:
        return
    scheme, _, token = current_request().headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        errors.unauthorized("Send a bearer token: Authorization: Bearer <token>.", token_sent=False)
    if authenticator.subject(token.strip()) != user_id:
        errors.forbidden("The token is for another user.")
