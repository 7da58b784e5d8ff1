"""`python -m tasks_api`: the web process (the Procfile's), gunicorn with gunicorn.conf.py.

gunicorn reads WEB_CONCURRENCY as it is imported, before any config file: a value that
is not a number ended the start in a 15-line traceback. Checked here first, the server's
settings that are malformed end it in one line naming the variable. Arguments are
gunicorn's (`python -m tasks_api --bind 127.0.0.1:8000`).
"""

from __future__ import annotations

import sys

from .config import ConfigError, ServerSettings


def main() -> None:
    try:
        ServerSettings.from_env()
    except ConfigError as error:
        raise SystemExit(f"tasks_api: {error}") from None
    from gunicorn.app.wsgiapp import run

    sys.argv = ["gunicorn", "--config", "gunicorn.conf.py", *sys.argv[1:], "wsgi:app"]
    run()


if __name__ == "__main__":
    main()
