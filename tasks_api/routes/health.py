"""The platform's probes: liveness and readiness."""

from __future__ import annotations

from flask.views import MethodView

from .. import db
from ..schemas.fields import HealthSchema
from .base import Blueprint, operation

health = Blueprint("health", __name__, url_prefix="/health", description="Probes for the platform.")


@health.route("")
class Liveness(MethodView):
    init_every_request = False

    @operation("getHealth")
    @health.response(200, HealthSchema, description="The process is up.")
    def get(self) -> dict[str, str]:
        """Report that the process is up

        Never touches the database, so a sleeping database does not fail it.
        """
        return {"status": "ok"}


@health.route("/ready")
class Readiness(MethodView):
    init_every_request = False

    @operation("getReadiness", 503)
    @health.response(200, HealthSchema, description="The database answers, migrated.")
    def get(self) -> dict[str, str]:
        """Report whether the database answers and its schema fits this version

        A 503 names what is wrong: the database cannot be reached, or its migrations
        have not run (the detail says which command runs them).
        """
        db.read(db.check_schema)
        return {"status": "ok"}
