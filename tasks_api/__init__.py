"""tasks_api: a REST API for each user's to-do tasks."""

from __future__ import annotations

import logging
from importlib.resources import files
from pathlib import Path

import flask_smorest
from flask import Blueprint, Flask

from . import db, errors, routes
from .config import Settings
from .schemas import ProblemSchema

__version__ = "1.0.0"

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024

DESCRIPTION = """\
Each user's to-do tasks, under `/api/{user_id}/tasks`.

Errors are `application/problem+json` (RFC 9457). Request bodies are JSON objects of at
most 64 KiB; an empty body counts as no body.
"""


class Api(flask_smorest.Api):
    """flask-smorest's Api, without the parts that would misdescribe this API."""

    # Errors are documented per operation as problem+json, not as a generic default.
    DEFAULT_ERROR_RESPONSE_NAME = None
    ERROR_SCHEMA = ProblemSchema

    def _register_pagination_header(self) -> None:
        """Lists page by cursor and `Link`, not flask-smorest's X-Pagination header."""


def create_app(settings: Settings | None = None, *, instance_path: str | None = None) -> Flask:
    """Build the app. Settings come from the environment unless given (tests give them)."""
    settings = settings or Settings.from_env()
    app = Flask(__name__, instance_path=instance_path)
    _configure_logging(settings)
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        API_TITLE="Tasks API",
        API_VERSION=__version__,
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL="/docs/assets/",
        API_SPEC_OPTIONS={"info": {"description": DESCRIPTION}},
    )
    # Keep each schema's field order (id first) rather than sorting keys.
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["tasks_api.settings"] = settings

    db.init_app(app, settings)

    api = Api(app)
    errors.init_app(app)
    errors.document(api)
    routes.register(api)
    app.register_blueprint(_swagger_ui_assets())

    log.warning(
        "authentication is not implemented yet: anyone can read and change any "
        "user's tasks under /api"
    )
    return app


def _swagger_ui_assets() -> Blueprint:
    """Serve Swagger UI from its packaged distribution: /docs works offline, no CDN."""
    dist = Path(str(files("flask_swagger_ui") / "dist"))
    return Blueprint("swagger_ui", __name__, static_folder=dist, static_url_path="/docs/assets")


def _configure_logging(settings: Settings) -> None:
    logger = logging.getLogger(__name__)
    logger.setLevel(settings.log_level)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
