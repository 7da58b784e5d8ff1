"""schemathesis hooks for .ci/run: each request acts as the user in its path.

The service under test verifies HS256 tokens with AUTH_JWT_SECRET, or in embedded mode
with the secret it generated in instance/auth-secret.
"""

import os
import time
from pathlib import Path

import jwt
import schemathesis


def _secret() -> str:
    return os.environ.get("AUTH_JWT_SECRET") or Path("instance/auth-secret").read_text().strip()


@schemathesis.auth(refresh_interval=None)
class PathUserToken:
    def get(self, case, context):  # type: ignore[no-untyped-def]
        user_id = (case.path_parameters or {}).get("user_id")
        if user_id is None:
            return None
        now = int(time.time())
        return jwt.encode({"sub": str(user_id), "iat": now, "exp": now + 600}, _secret())

    def set(self, case, data, context):  # type: ignore[no-untyped-def]
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}
