"""tasks_api: a REST API for each user's to-do tasks."""

from __future__ import annotations

import gc

# No garbage collection while the stack below is imported: its objects all live as long
# as the process, and each collection would only walk them again, more of them each time
# (the import is most of a cold start, and takes ~15% less CPU so). The collector is left
# as it was found.
_collecting = gc.isenabled()
gc.disable()

import functools
import inspect
import sys
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

import click
import flask_smorest
from flask import Blueprint, Flask, Response
from flask.json.provider import DefaultJSONProvider
from flask_cors import CORS
from werkzeug.middleware.proxy_fix import ProxyFix

from . import auth, cli, db, errors, logs, pages, routes, sync
from .config import ConfigError, Settings, instance_secret
from .context import current_request
from .schemas.fields import ProblemSchema

if _collecting:
    gc.enable()

__version__ = "1.0.0"

MAX_BODY_BYTES = 64 * 1024

# JSON responses load nothing; the docs page loads only this server's scripts and styles.
API_CSP = "default-src 'none'; frame-ancestors 'none'"
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
DOCS_ENDPOINT = "api-docs.openapi_swagger_ui"
CORS_ALLOW_HEADERS = [
    "Authorization",
    "Content-Type",
    "If-Match",
    "If-None-Match",
    "Idempotency-Key",
]
# What a script may read of an answer: every header the contract gives a meaning to.
CORS_EXPOSE_HEADERS = [
    "ETag",
    "Link",
    "Location",
    "Retry-After",
    "X-Request-ID",
    "Idempotent-Replayed",
    "WWW-Authenticate",
]

DESCRIPTION = """\
Each user's to-do tasks, under `/api/{user_id}/tasks`.

Errors are `application/problem+json` (RFC 9457). Request bodies are JSON objects of at
most 64 KiB; an empty body counts as no body.
"""


class JSONProvider(DefaultJSONProvider):
    """Flask's, with each schema's field order kept (id first), and text as UTF-8 rather
    than \\uXXXX escapes (RFC 8259): escapes made a page of non-Latin text up to 6x larger.

    A lone surrogate cannot be UTF-8, and comes only from a client's own malformed input
    echoed in an error (a field named "\\ud800"): such a body is escaped as before.
    """

    sort_keys = False
    ensure_ascii = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        text = super().dumps(obj, **kwargs)
        if not text.isascii():
            try:
                text.encode()
            except UnicodeEncodeError:
                text = super().dumps(obj, **{**kwargs, "ensure_ascii": True})
        return text


class App(Flask):
    """Flask, asking once per function whether it is a coroutine.

    Flask asks before calling each hook and view (`ensure_sync`, ten times a request,
    for the same few functions); `inspect.iscoroutinefunction` unwraps and inspects the
    function each time. Keyed by the function under a bound method: a
    view's method is bound anew on each request.
    """

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        try:
            plain = _plain(getattr(func, "__func__", func))
        except TypeError:  # a callable that cannot be a key: asked each time
            plain = not inspect.iscoroutinefunction(func)
        return func if plain else self.async_to_sync(func)


@functools.lru_cache(maxsize=1024)
def _plain(func: Callable[..., Any]) -> bool:
    return not inspect.iscoroutinefunction(func)


class Api(flask_smorest.Api):
    """flask-smorest's Api, without the parts that would misdescribe this API."""

    # Errors are documented per operation as problem+json, not as a generic default.
    DEFAULT_ERROR_RESPONSE_NAME = None
    ERROR_SCHEMA = ProblemSchema

    def _register_pagination_header(self) -> None:
        """Lists page by cursor and `Link`, not flask-smorest's X-Pagination header."""


def create_app(settings: Settings | None = None, *, instance_path: str | None = None) -> Flask:
    """Build the app. Settings come from the environment unless given (tests give them).

    Under the `flask` command (migrations, tokens, purges) nothing is served: the
    settings only a server needs may be missing, and logs go to stderr so that stdout
    carries the command's result alone.
    """
    command = click.get_current_context(silent=True)
    serving = command is None or command.info_name == "run"
    if settings is None:
        try:
            settings = Settings.from_env(serving=serving)
        except ConfigError as error:
            raise SystemExit(f"tasks_api: {error}") from None
    logs.configure(settings, stream=sys.stdout if serving else sys.stderr)
    app = App(__name__, instance_path=instance_path or settings.instance_path)
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        API_TITLE="Tasks API",
        API_VERSION=__version__,
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL="/docs/assets/",
        # Every operation needs the bearer token unless it says otherwise.
        API_SPEC_OPTIONS={"info": {"description": DESCRIPTION}, "security": [{"bearerAuth": []}]},
    )
    app.json = JSONProvider(app)
    app.extensions["tasks_api.settings"] = settings
    # Kept out of Flask's SECRET_KEY: with it set, Flask would open a cookie session on
    # every request, and this API has no sessions.
    secret_key = settings.secret_key
    if secret_key is None and settings.embedded:
        secret_key = instance_secret(Path(app.instance_path), "secret-key")
    if secret_key is not None:  # None only under the flask command, which serves nothing
        app.extensions["tasks_api.cursor_serializer"] = pages.serializer(secret_key)
        app.extensions["tasks_api.sync_serializer"] = sync.serializer(secret_key)
    if settings.trusted_proxies:
        # Scheme, host and port (for the next-page links) from the proxies' X-Forwarded-*.
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n, x_prefix=n
        )

    db.init_app(app, settings, serving=serving)
    auth.init_app(app, settings)

    if settings.cors_origins:
        # Bearer tokens, not cookies: no credentials mode needed.
        CORS(
            app,
            resources={r"/api/*": {"origins": list(settings.cors_origins)}},
            allow_headers=CORS_ALLOW_HEADERS,
            expose_headers=CORS_EXPOSE_HEADERS,
            max_age=600,
        )
        app.after_request(_vary_on_origin)
    app.after_request(_security_headers)

    api = Api(app)
    logs.init_app(app)
    errors.init_app(app)
    errors.document(api)
    routes.register(api)
    app.register_blueprint(_swagger_ui_assets())
    cli.register(app)

    return app


def _vary_on_origin(response: Response) -> Response:
    """`Vary: Origin` on every answer of a CORS route: flask-cors adds it only to an
    allowed origin's answer, and only when several origins are configured, so a shared
    cache could hand one origin's answer (or a no-CORS one) to another."""
    if current_request().path.startswith("/api/"):
        response.vary.add("Origin")
    return response


def _security_headers(response: Response) -> Response:
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = (
        DOCS_CSP if current_request().endpoint == DOCS_ENDPOINT else API_CSP
    )
    return response


def _swagger_ui_assets() -> Blueprint:
    """Serve Swagger UI from its packaged distribution: /docs works offline, no CDN."""
    dist = Path(str(files("flask_swagger_ui") / "dist"))
    return Blueprint("swagger_ui", __name__, static_folder=dist, static_url_path="/docs/assets")
