"""Bearer token verification: who is calling, and whether the path's user is them."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from flask import Flask, current_app, request
from jwt import PyJWK

from . import errors
from .config import Settings, instance_secret

log = logging.getLogger(__name__)

SECRET_FILE = "auth-secret"
# Clock skew tolerated between the token's issuer and this server.
LEEWAY_SECONDS = 30
JWKS_TIMEOUT_SECONDS = 3.0
JWKS_MAX_BYTES = 256 * 1024
# Even with no unknown `kid`, keys are refetched this often so removed ones stop working.
JWKS_MAX_AGE_SECONDS = 600.0
# A verified token is trusted again without checking for this long (never past its
# `exp`); the cache holds this many tokens, and starts over when full.
VERIFIED_SECONDS = 60.0
VERIFIED_MAX = 4096


class KeySet:
    """The keys published at a JWKS URL, cached.

    A token whose `kid` is not in the cache triggers a fetch, but at most one fetch
    per cooldown: tokens with made-up `kid`s cannot make the server fetch on every
    request. A failed fetch keeps the keys already held; with no key for the token,
    that is a 503 (the server cannot tell), never a pass.
    """

    def __init__(self, url: str, *, cooldown: float) -> None:
        self.url = url
        self.cooldown = cooldown
        self._keys: dict[str | None, PyJWK] = {}
        self._fetched_at = -math.inf
        self._failed = False
        self._lock = threading.Lock()

    def key(self, kid: str | None) -> PyJWK:
        with self._lock:
            key = self._find(kid)
            since = time.monotonic() - self._fetched_at
            if (key is None or since >= JWKS_MAX_AGE_SECONDS) and since >= self.cooldown:
                self._fetch()
                key = self._find(kid)
            if key is not None:
                return key
            if self._failed:
                wait = self.cooldown - (time.monotonic() - self._fetched_at)
                errors.service_unavailable(
                    "The token's signing keys cannot be fetched right now; retry shortly.",
                    retry_after=max(1, math.ceil(wait)),
                )
            errors.unauthorized("The token is signed with an unknown key.", token_sent=True)

    def _find(self, kid: str | None) -> PyJWK | None:
        if kid is None and len(self._keys) == 1:  # a single key needs no `kid`
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    def _fetch(self) -> None:
        self._fetched_at = time.monotonic()
        try:
            req = urllib.request.Request(self.url, headers={"Accept": "application/json"})
            with urllib.request.urlopen(req, timeout=JWKS_TIMEOUT_SECONDS) as response:
                body = response.read(JWKS_MAX_BYTES + 1)
            if len(body) > JWKS_MAX_BYTES:
                raise ValueError("key set too large")
            keys = _signing_keys(json.loads(body))
        except (OSError, ValueError) as exc:
            self._failed = True
            log.warning("fetching keys from %s failed: %s", self.url, type(exc).__name__)
            return
        self._keys, self._failed = keys, False
        log.info("fetched %d signing keys from %s", len(keys), self.url)


def _signing_keys(document: Any) -> dict[str | None, PyJWK]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK set")
    keys: dict[str | None, PyJWK] = {}
    for data in document["keys"]:
        if not isinstance(data, dict) or data.get("use", "sig") != "sig":
            continue
        try:
            key = PyJWK(data)
        except jwt.PyJWTError:  # a key type or curve this server cannot use
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
        until = min(float(claims["exp"]) + LEEWAY_SECONDS, now + VERIFIED_SECONDS)
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
    authenticator: Authenticator | None = current_app.extensions["tasks_api.auth"]
    if authenticator is None:
        return
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        errors.unauthorized("Send a bearer token: Authorization: Bearer <token>.", token_sent=False)
    if authenticator.subject(token.strip()) != user_id:
        errors.forbidden("The token is for another user.")
