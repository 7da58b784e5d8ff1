"""Bearer tokens: HS256 with a shared secret, and EdDSA/ES256/RS256 from a local JWKS server."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from flask import Flask
from flask.testing import FlaskClient
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from tasks_api import auth, create_app
from tasks_api.config import Settings
from tests.support import REQUIRED, SECRET, assert_problem, token_for

# --- a local JWKS server -------------------------------------------------------------


@dataclass
class SigningKey:
    kid: str
    algorithm: str
    private: Any

    @property
    def jwk(self) -> dict[str, Any]:
        codec: dict[str, Any] = {"EdDSA": OKPAlgorithm, "ES256": ECAlgorithm, "RS256": RSAAlgorithm}
        data: dict[str, Any] = codec[self.algorithm].to_jwk(self.private.public_key(), as_dict=True)
        return {**data, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def sign(self, claims: dict[str, Any], *, kid: str | None = None) -> str:
        return jwt.encode(
            claims, self.private, algorithm=self.algorithm, headers={"kid": kid or self.kid}
        )


def new_key(algorithm: str) -> SigningKey:
    generate: dict[str, Callable[[], Any]] = {
        "EdDSA": ed25519.Ed25519PrivateKey.generate,
        "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }
    private = generate[algorithm]()
    return SigningKey(f"{algorithm.lower()}-{uuid.uuid4().hex[:8]}", algorithm, private)


@dataclass
class JWKSServer:
    """Serves `keys` at /jwks; `mode` makes it fail; `fetches` counts requests."""

    keys: list[SigningKey] = field(default_factory=list)
    mode: str = "up"  # "up", "error" (HTTP 503), "garbage", or "hang" (past the timeout)
    fetches: int = 0
    url: str = ""


@pytest.fixture
def jwks() -> Iterator[JWKSServer]:
    state = JWKSServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            state.fetches += 1
            if state.mode == "hang":
                time.sleep(4)
            if state.mode == "error":
                self.send_error(503)
                return
            body = (
                b"<html>oops"
                if state.mode == "garbage"
                else json.dumps({"keys": [key.jwk for key in state.keys]}).encode()
            )
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_port}/api/auth/jwks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


ISSUER = AUDIENCE = "https://app.example.com"


@pytest.fixture
def jwks_app(jwks: JWKSServer, tmp_path: Path) -> Callable[..., FlaskClient]:
    """Make a client of an app that trusts the JWKS server's keys."""

    def make(**env: str) -> FlaskClient:
        settings = Settings.from_env(
            {
                "AUTH_JWKS_URL": jwks.url,
                "AUTH_JWT_ISSUER": ISSUER,
                "AUTH_JWT_AUDIENCE": AUDIENCE,
                "AUTH_JWKS_COOLDOWN": "0.5",
                **env,
            }
        )
        return create_app(settings, instance_path=str(tmp_path)).test_client()

    return make


def claims(sub: str = "alice", **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300, **extra}


def create(client: FlaskClient, token: str, user: str = "alice") -> Any:
    return client.post(
        f"/api/{user}/tasks", json={"title": "x"}, headers={"Authorization": f"Bearer {token}"}
    )


def assert_refused(response: Any, *, token_sent: bool = True) -> dict[str, Any]:
    problem = assert_problem(response, 401)
    expected = 'Bearer error="invalid_token"' if token_sent else "Bearer"
    assert response.headers["WWW-Authenticate"] == expected
    return problem


# --- JWKS: key types, rotation, floods, outages ------------------------------------------


@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256", "RS256"])
def test_tokens_signed_by_each_key_type_are_accepted(
    jwks: JWKSServer, jwks_app: Callable[..., FlaskClient], algorithm: str
) -> None:
    key = new_key(algorithm)
    jwks.keys = [new_key("EdDSA"), key]
    client = jwks_app()

    response = create(client, key.sign(claims()))

    assert response.status_code == 201, response.get_json()
    assert response.get_json()["user_id"] == "alice"


def test_a_key_the_set_does_not_hold_is_refused(
    jwks: JWKSServer, jwks_app: Callable[..., FlaskClient]
) -> None:
    listed = new_key("EdDSA")
    jwks.keys = [listed]
    impostor = SigningKey(listed.kid, "EdDSA", ed25519.Ed25519PrivateKey.generate())

    assert_refused(create(jwks_app(), impostor.sign(claims())))


def test_algorithms_are_pinned_by_configuration(
    jwks: JWKSServer, jwks_app: Callable[..., FlaskClient]
) -> None:
    key = new_key("RS256")
    jwks.keys = [key]

    assert_refused(create(jwks_app(AUTH_JWT_ALGORITHMS="EdDSA"), key.sign(claims())))


def test_key_rotation_is_picked_up_after_the_cooldown(
    jwks: JWKSServer, jwks_app: Callable[..., FlaskClient]
) -> None:
    old, new = new_key("EdDSA"), new_key("ES256")
    jwks.keys = [old]
    client = jwks_app()
    assert create(client, old.sign(claims())).status_code == 201

    jwks.keys = [old, new]
    assert_refused(create(client, new.sign(claims())))  # within the cooldown: not refetched
    time.sleep(0.6)

    assert create(client, new.sign(claims())).status_code == 201
    assert jwks.fetches == 2


def test_a_flood_of_unknown_kids_fetches_at_most_once_per_cooldown(
    jwks: JWKSServer, jwks_app: Callable[..., FlaskClient]
) -> None:
    key = new_key("EdDSA")
    jwks.keys = [key]
    client = jwks_app(AUTH_JWKS_COOLDOWN="30")

    for _ in range(200):
        assert_refused(create(client, key.sign(claims(), kid=uuid.uuid4().hex)))

    assert jwks.fetches == 1
    assert create(client, key.sign(claims())).status_code == 201
    assert jwks.fetches == 1


@pytest.mark.parametrize("mode", ["error", "garbage", "hang", "stopped"])
def test_a_key_server_that_is_down_gives_503_and_never_lets_a_request_in(
    jwks: JWKSServer, jwks_app: Callable[..., FlaskClient], mode: str
) -> None:
    key = new_key("EdDSA")
    jwks.keys = [key]
    if mode == "stopped":  # nothing listens on port 1
        client = jwks_app(AUTH_JWKS_URL="http://127.0.0.1:1/api/auth/jwks")
    else:
        jwks.mode = mode
        client = jwks_app()

    started = time.monotonic()
    response = create(client, key.sign(claims()))

    assert_problem(response, 503)
    assert int(response.headers["Retry-After"]) >= 1
    assert time.monotonic() - started < 4  # the fetch gives up after a few seconds
    if mode != "stopped":
        jwks.mode = "up"
        time.sleep(0.6)
        assert create(client, key.sign(claims())).status_code == 201
        listed = client.get(
            "/api/alice/tasks", headers={"Authorization": f"Bearer {key.sign(claims())}"}
        )
        assert len(listed.get_json()) == 1  # the refused request created nothing


# --- a key server that misbehaves at the socket level -----------------------------------


class RawKeyServer:
    """A TCP server on 127.0.0.1 that answers each connection as `mode` says: "up"
    (the key set, well formed), or one of the failures in MISBEHAVIOURS.
    """

    def __init__(self, keys: list[SigningKey]) -> None:
        self.keys = keys
        self.mode = "up"
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._closing = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/.well-known/jwks.json"
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            self.connections += 1
            thread = threading.Thread(target=self._answer, args=(conn, self.mode), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _answer(self, conn: socket.socket, mode: str) -> None:
        with conn, contextlib.suppress(OSError):
            path = conn.recv(65536).split(b" ")[1]
            if mode == "redirect" and path != b"/moved/jwks.json":
                conn.sendall(b"HTTP/1.1 308 Permanent Redirect\r\nLocation: /moved/jwks.json\r\n")
                conn.sendall(b"Content-Length: 0\r\n\r\n")
            elif mode == "redirect-loop":
                conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: " + path + b"\r\n\r\n")
            elif mode == "hang":  # accepted, then silence
                self._closing.wait(10)
            elif mode == "trickle":  # a well-formed answer, one byte every 2 s
                for byte in self._response(self._key_set()):
                    if self._closing.wait(2):
                        return
                    conn.sendall(bytes([byte]))
            elif mode in TRICKLED_BODIES:  # headers at once, then the body a byte every 0.5 s
                body = self._key_set()
                conn.sendall(TRICKLED_BODIES[mode].format(length=len(body)).encode())
                for byte in body[:12]:  # then, after 6 s, the server gives up
                    if self._closing.wait(0.5):
                        return
                    conn.sendall(bytes([byte]))
            elif mode == "not-http":
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
            elif mode == "broken-chunked":
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b'Transfer-Encoding: chunked\r\n\r\n10\r\n{"keys": [\r\nzz\r\n'
                )
            elif mode == "deep-json":
                conn.sendall(self._response(b'{"keys": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"))
            elif mode == "300kb":  # the real key among enough others to weigh 300 KB
                filler = [{"kty": "oct", "kid": f"filler-{i}", "k": "A" * 200} for i in range(1200)]
                conn.sendall(self._response(self._key_set(filler)))
            elif mode == "not-utf8":
                conn.sendall(self._response(b'{"keys": [{"kid": "\xff\xfe"}]}'))
            elif mode == "bad-keys":  # JSON, but no key in it is a key
                conn.sendall(
                    self._response(b'{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": 1}]}')
                )
            else:
                conn.sendall(self._response(self._key_set()))

    def _key_set(self, extra: list[dict[str, Any]] | None = None) -> bytes:
        return json.dumps({"keys": [key.jwk for key in self.keys] + (extra or [])}).encode()

    @staticmethod
    def _response(body: bytes) -> bytes:
        head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        return f"{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body

    def close(self) -> None:
        self._closing.set()
        # Closing alone would leave a thread blocked in accept(); shutting down wakes it.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for thread in list(self._threads):
            thread.join(timeout=5)
            assert not thread.is_alive(), "a fake key server thread did not stop"


# The heads of answers whose body then trickles: whether the answer closes the connection
# (as http.client then reads it through the response, not the connection) or keeps it
# alive must not matter to the deadline (issue 21).
TRICKLED_BODIES = {
    "trickle-body-close": "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    "Content-Length: {length}\r\nConnection: close\r\n\r\n",
    "trickle-body-http10": "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n",
    "trickle-body-keep-alive": "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    "Content-Length: {length}\r\n\r\n",
}

MISBEHAVIOURS = ["hang", "trickle", "not-http", "broken-chunked", "deep-json", "300kb"]
MISBEHAVIOURS += ["not-utf8", "bad-keys", "redirect-loop"]


@pytest.fixture
def raw_keys(tmp_path: Path) -> Iterator[tuple[RawKeyServer, SigningKey, FlaskClient]]:
    """A raw key server with one EdDSA key, and a client of an app that trusts it."""
    key = new_key("EdDSA")
    server = RawKeyServer([key])
    settings = Settings.from_env(
        {
            "AUTH_JWKS_URL": server.url,
            "AUTH_JWT_ISSUER": ISSUER,
            "AUTH_JWT_AUDIENCE": AUDIENCE,
            "AUTH_JWKS_COOLDOWN": "0.5",
        }
    )
    yield server, key, create_app(settings, instance_path=str(tmp_path)).test_client()
    server.close()


def listing(client: FlaskClient, token: str) -> Any:
    return client.get("/api/alice/tasks", headers={"Authorization": f"Bearer {token}"})


@pytest.mark.parametrize("mode", MISBEHAVIOURS)
def test_a_key_server_that_misbehaves_is_503_within_the_deadline_never_500_or_401(
    raw_keys: tuple[RawKeyServer, SigningKey, FlaskClient], mode: str
) -> None:
    server, key, client = raw_keys
    server.mode = mode
    token = key.sign(claims())

    started = time.monotonic()
    first = listing(client, token)
    elapsed = time.monotonic() - started
    connections = server.connections
    # Within the cooldown no new fetch is made, and the token is still not refused.
    again = listing(client, token)

    assert_problem(first, 503)
    assert int(first.headers["Retry-After"]) >= 1
    assert elapsed < auth.JWKS_DEADLINE_SECONDS + 1
    assert_problem(again, 503)
    assert server.connections == connections

    server.mode = "up"
    time.sleep(0.6)
    assert listing(client, token).status_code == 200


@pytest.mark.parametrize("mode", TRICKLED_BODIES)
def test_a_trickled_body_is_503_within_the_deadline_however_the_answer_ends(
    raw_keys: tuple[RawKeyServer, SigningKey, FlaskClient], mode: str
) -> None:
    server, key, client = raw_keys
    server.mode = mode

    started = time.monotonic()
    response = listing(client, key.sign(claims()))
    elapsed = time.monotonic() - started

    assert_problem(response, 503)
    assert elapsed < auth.JWKS_DEADLINE_SECONDS + 0.5, (
        f"{response.status_code} after {elapsed:.1f} s"
    )


def test_a_key_set_that_moved_is_followed(
    raw_keys: tuple[RawKeyServer, SigningKey, FlaskClient],
) -> None:
    server, key, client = raw_keys
    server.mode = "redirect"

    assert listing(client, key.sign(claims())).status_code == 200
    assert server.connections == 2


def test_requests_do_not_pile_up_behind_a_fetch(
    raw_keys: tuple[RawKeyServer, SigningKey, FlaskClient],
) -> None:
    server, key, client = raw_keys
    server.mode = "hang"
    tokens = [key.sign(claims(jti=str(n))) for n in range(8)]  # none verified yet

    def timed(token: str) -> tuple[int, float]:
        started = time.monotonic()
        status = listing(client, token).status_code
        return status, time.monotonic() - started

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(timed, tokens))

    assert [status for status, _ in results] == [503] * 8
    assert max(elapsed for _, elapsed in results) < auth.JWKS_DEADLINE_SECONDS + 1
    assert server.connections == 1


def test_a_fetch_in_progress_does_not_hold_up_tokens_whose_key_is_held(
    raw_keys: tuple[RawKeyServer, SigningKey, FlaskClient],
) -> None:
    server, key, client = raw_keys
    assert listing(client, key.sign(claims())).status_code == 200
    server.mode = "hang"
    time.sleep(0.6)  # past the cooldown: an unknown key will make the server fetch
    rotated = new_key("EdDSA")

    with ThreadPoolExecutor(max_workers=1) as pool:
        fetching = pool.submit(listing, client, rotated.sign(claims()))
        time.sleep(0.3)
        started = time.monotonic()
        held = listing(client, key.sign(claims(jti="another")))
        elapsed = time.monotonic() - started
        assert_problem(fetching.result(), 503)  # the new key could not be fetched

    assert held.status_code == 200
    assert elapsed < 1


def test_cached_keys_keep_working_while_the_key_server_is_down(
    jwks: JWKSServer, jwks_app: Callable[..., FlaskClient]
) -> None:
    key = new_key("ES256")
    jwks.keys = [key]
    client = jwks_app()
    assert create(client, key.sign(claims())).status_code == 201

    jwks.mode = "error"
    time.sleep(0.6)

    assert create(client, key.sign(claims())).status_code == 201
    unknown = new_key("ES256")
    assert_problem(create(client, unknown.sign(claims())), 503)


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"iss": "https://evil.example.com"}, "another service"),
        ({"aud": "https://other.example.com"}, "another service"),
        ({"aud": None}, "`aud`"),
        ({"exp": int(time.time()) - 120}, "expired"),
        ({"exp": None}, "`exp`"),
        ({"sub": None}, "`sub`"),
    ],
)
def test_issuer_audience_and_required_claims_are_checked(
    jwks: JWKSServer, jwks_app: Callable[..., FlaskClient], change: dict[str, Any], detail: str
) -> None:
    key = new_key("EdDSA")
    jwks.keys = [key]
    payload = {k: v for k, v in {**claims(), **change}.items() if v is not None}

    problem = assert_refused(create(jwks_app(), key.sign(payload)))

    assert detail in problem["detail"]


def test_algorithm_confusion_hs256_signed_with_the_public_key_is_refused(
    jwks: JWKSServer, jwks_app: Callable[..., FlaskClient]
) -> None:
    key = new_key("RS256")
    jwks.keys = [key]
    public_pem = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    body = b64(json.dumps(claims()).encode())
    signature = b64(hmac.new(public_pem, header + b"." + body, hashlib.sha256).digest())
    forged = b".".join([header, body, signature]).decode()

    assert_refused(create(jwks_app(), forged))


# --- HS256 with a shared secret (the suite's apps) ---------------------------------------


def hs256(**overrides: Any) -> str:
    return token_for("alice", **overrides)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(
            token_for("alice", secret="another-secret-of-at-least-32-bytes!"), id="wrong-secret"
        ),
        pytest.param(token_for("alice", lifetime=-120), id="expired"),
        pytest.param(
            jwt.encode(
                {"sub": "alice", "exp": int(time.time()) + 60}, cast(Any, None), algorithm="none"
            ),
            id="alg-none",
        ),
        pytest.param(
            jwt.encode(
                {"sub": "alice", "exp": int(time.time()) + 60}, SECRET + "x" * 32, algorithm="HS512"
            ),
            id="other-hmac-algorithm",
        ),
        pytest.param(jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"), id="no-exp"),
        pytest.param(
            jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256"), id="no-sub"
        ),
        pytest.param("not.a.jwt", id="garbage"),
        pytest.param("e30.e30.", id="empty-parts"),
        pytest.param("", id="empty"),
    ],
)
def test_invalid_hs256_tokens_are_401(client: FlaskClient, token: str) -> None:
    response = client.get("/api/alice/tasks", headers={"Authorization": f"Bearer {token}"})

    problem = assert_refused(response)
    assert token not in json.dumps(problem) or not token


def signed(payload: str, secret: str = SECRET) -> str:
    """An HS256 token around `payload` as written: JSON no encoder would produce."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(payload.encode())
    signature = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64(signature)).decode()


NOW = int(time.time())
# Not a time: too large or small for a date, negative, not a JSON number.
NOT_TIMES = ["1" + "0" * 400, "-1" + "0" * 400, "1e400", "-1e400", "NaN", "Infinity", "-1"]
NOT_TIMES += ["1e300", '"soon"', f'"{NOW}"', "[]", "{}", "null", "true"]


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", NOT_TIMES)
def test_a_time_claim_that_cannot_be_a_time_is_401(
    client: FlaskClient, tasks_url: str, user_id: str, claim: str, value: str
) -> None:
    times = {"exp": str(NOW + 3600), "nbf": str(NOW - 60), "iat": str(NOW - 60), claim: value}
    payload = ", ".join(f'"{name}": {time_}' for name, time_ in times.items())
    token = signed(f'{{"sub": "{user_id}", {payload}}}')

    assert_refused(client.get(tasks_url, headers={"Authorization": f"Bearer {token}"}))


@pytest.mark.parametrize("exp", [str(NOW + 3600), f"{NOW + 3600}.5"])
def test_time_claims_that_are_times_are_accepted(
    client: FlaskClient, tasks_url: str, user_id: str, exp: str
) -> None:
    token = signed(f'{{"sub": "{user_id}", "exp": {exp}, "nbf": 0, "iat": {NOW - 60}.25}}')

    response = client.get(tasks_url, headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 200, response.get_json()


def test_a_token_accepted_once_is_refused_after_it_expires(
    client: FlaskClient, tasks_url: str, user_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Verified tokens are remembered; never past their `exp` (here with no leeway).
    monkeypatch.setattr(auth, "LEEWAY_SECONDS", 0)
    token = token_for(user_id, lifetime=2)
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get(tasks_url, headers=headers).status_code == 200
    assert client.get(tasks_url, headers=headers).status_code == 200

    time.sleep(2.5)

    assert_refused(client.get(tasks_url, headers=headers))
    assert client.post(tasks_url, json={"title": "late"}, headers=headers).status_code == 401


def test_a_remembered_token_still_opens_only_its_own_users_tasks(
    client: FlaskClient, tasks_url: str, user_id: str
) -> None:
    headers = {"Authorization": f"Bearer {token_for(user_id)}"}
    assert client.get(tasks_url, headers=headers).status_code == 200

    response = client.get("/api/someone-else/tasks", headers=headers)

    assert_problem(response, 403)


def test_a_tampered_copy_of_a_remembered_token_is_refused(
    client: FlaskClient, tasks_url: str, user_id: str
) -> None:
    token = token_for(user_id)
    assert client.get(tasks_url, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged_payload = base64.urlsafe_b64encode(
        json.dumps({**claims, "sub": "mallory"}).encode()
    ).rstrip(b"=")
    forged = f"{header}.{forged_payload.decode()}.{signature}"

    response = client.get("/api/mallory/tasks", headers={"Authorization": f"Bearer {forged}"})

    assert_refused(response)


@pytest.mark.parametrize("header", [None, "Basic YWxpY2U6c2VjcmV0", "Token abc", "alice"])
def test_no_bearer_token_is_401_with_the_bare_challenge(
    client: FlaskClient, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}

    response = client.get("/api/alice/tasks", headers=headers, auth=False)

    assert_refused(response, token_sent=False)


def test_the_scheme_is_case_insensitive(client: FlaskClient, tasks_url: str, user_id: str) -> None:
    response = client.get(tasks_url, headers={"Authorization": f"bearer {token_for(user_id)}"})

    assert response.status_code == 200


SOME_TASK = "6f1c2a9e-8a0b-4a53-9f57-3c1e4f2b9d10"


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "", None),
        ("POST", "", {"title": "planted"}),
        ("GET", "/{id}", None),
        ("PUT", "/{id}", {"title": "changed"}),
        ("DELETE", "/{id}", None),
        ("PATCH", "/{id}/complete", None),
    ],
)
def test_another_users_token_is_403_on_every_route_and_changes_nothing(
    client: FlaskClient,
    tasks_url: str,
    task_url: str,
    task: dict[str, Any],
    method: str,
    suffix: str,
    body: dict[str, Any] | None,
) -> None:
    mallory = {"Authorization": f"Bearer {token_for('mallory')}"}

    response = client.open(
        tasks_url + suffix.format(id=task["id"]), method=method, json=body, headers=mallory
    )

    problem = assert_problem(response, 403)
    assert problem["detail"] == "The token is for another user."
    assert client.get(tasks_url).get_json() == [task]


def test_every_api_route_without_a_token_is_401_and_changes_nothing(
    client: FlaskClient, tasks_url: str, task_url: str, task: dict[str, Any]
) -> None:
    for method, url in [
        ("GET", tasks_url),
        ("POST", tasks_url),
        ("GET", task_url),
        ("PUT", task_url),
        ("DELETE", task_url),
        ("PATCH", f"{task_url}/complete"),
    ]:
        assert_refused(
            client.open(url, method=method, json={"title": "x"}, auth=False), token_sent=False
        )
    assert client.get(task_url).get_json() == task


def test_401_comes_before_validation(client: FlaskClient) -> None:
    assert_refused(client.post("/api/bad%20id/tasks", json={}, auth=False), token_sent=False)


def test_tokens_are_never_logged(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    bad = token_for("alice", secret="another-secret-of-at-least-32-bytes!")
    with caplog.at_level("DEBUG"):
        client.get("/api/alice/tasks", headers={"Authorization": f"Bearer {bad}"})
        client.get("/api/bob/tasks", headers={"Authorization": f"Bearer {hs256()}"})

    assert bad not in caplog.text
    assert hs256().split(".")[2] not in caplog.text


def test_health_and_docs_need_no_token(client: FlaskClient) -> None:
    for path in ["/health", "/health/ready", "/openapi.json", "/docs"]:
        assert client.get(path, auth=False).status_code == 200, path


# --- secure defaults at start -----------------------------------------------------------


def test_embedded_mode_generates_a_private_secret_and_mints_tokens(tmp_path: Path) -> None:
    app = create_app(Settings(), instance_path=str(tmp_path))

    secret_file = tmp_path / "auth-secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert len(secret_file.read_text().strip()) >= 43

    result = app.test_cli_runner().invoke(args=["token", "alice", "--expires-in", "90m"])
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    claims = jwt.decode(token, secret_file.read_text().strip(), algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == 90 * 60

    client = app.test_client()
    response = client.post(
        "/api/alice/tasks", json={"title": "x"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 201

    again = create_app(Settings(), instance_path=str(tmp_path))  # restarts keep the secret
    assert (
        again.test_client()
        .get("/api/alice/tasks", headers={"Authorization": f"Bearer {token}"})
        .status_code
        == 200
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["token", "has space"], "USER_ID"),
        (["token", "alice", "--expires-in", "soon"], "expected a duration"),
        (["token", "alice", "--expires-in", "0"], "expected a duration"),
    ],
)
def test_token_command_rejects_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    app = create_app(Settings(), instance_path=str(tmp_path))

    result = app.test_cli_runner().invoke(args=args)

    assert result.exit_code != 0
    assert message in result.output


def test_token_command_refuses_in_jwks_mode(jwks_app: Callable[..., FlaskClient]) -> None:
    app: Flask = jwks_app().application

    result = app.test_cli_runner().invoke(args=["token", "alice"])

    assert result.exit_code != 0
    assert "auth provider" in result.output


def test_auth_disabled_opens_api_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://app:pw@127.0.0.1:1/tasks",
            "AUTH_DISABLED": "true",
            "SECRET_KEY": REQUIRED["SECRET_KEY"],
        }
    )

    app = create_app(settings, instance_path=str(tmp_path))

    assert "AUTH_DISABLED=true" in caplog.text
    response = app.test_client().get("/api/alice/tasks")
    assert response.status_code == 503  # past authentication, to the (unreachable) database


# --- headers ----------------------------------------------------------------------------


def test_security_headers(client: FlaskClient, tasks_url: str) -> None:
    for response in [client.get(tasks_url), client.get("/nope"), client.get("/openapi.json")]:
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
    docs_policy = client.get("/docs").headers["Content-Security-Policy"]
    assert "script-src 'self'" in docs_policy
    assert "unsafe-inline" not in docs_policy.split("script-src")[1].split(";")[0]
