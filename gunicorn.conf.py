"""gunicorn settings for a PaaS: `python -m tasks_api` (the Procfile's web process) runs
`gunicorn --config gunicorn.conf.py wsgi:app`.

PaaS platforms set PORT and WEB_CONCURRENCY; a `.env` file in the project folder can
set them too. gunicorn also reads this file by default when started from the project
folder.
"""

import gc
import os

# The master imports and builds the app (preload_app) with the collector off, as
# Python's docs on gc.freeze() advise for a process that forks: the app's objects live
# as long as the process, and collections would only walk them, more each time.
# pre_fork() turns it back on. (tasks_api/__init__.py does the same for its imports.)
gc.disable()

from tasks_api.config import ConfigError, ServerSettings  # noqa: E402

try:
    # `.env` too, as the app reads it: PORT and WEB_CONCURRENCY written there count here.
    server = ServerSettings.from_env()
except ConfigError as error:
    raise SystemExit(f"tasks_api: {error}") from None

# A platform that sets PORT routes to it from outside: listen on every interface. With
# no PORT (a laptop), only this machine can connect.
bind = "127.0.0.1:8000" if server.port is None else f"0.0.0.0:{server.port}"
workers = server.workers
# Each worker runs requests in threads (tasks_api/server.py: gunicorn's gthread worker,
# with read deadlines, a drained accept queue on SIGTERM and problem+json errors), so a
# request waiting on the database leaves the process free for others. DB_POOL_SIZE
# defaults to the same number: one connection per thread, none waited for.
worker_class = "tasks_api.server.Worker"
threads = server.threads
# The app is built once, in the master, and the workers fork from it: they share its
# pages instead of each building its own (PSS per worker 52 -> 38 MiB, measured in
# bench/efficiency.py). Each worker then drops the pool it inherited (none is open: the
# master never serves) before its first connection (tasks_api/server.py).
preload_app = True
# Under the 30 s that Heroku's router and SIGTERM-to-SIGKILL window allow.
timeout = 25
graceful_timeout = 25
# The heartbeat file on tmpfs: a slow or full disk cannot stall workers.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# One line per request comes from the app (tasks_api.logs: route template, status,
# duration, request id), so gunicorn's own access log, with raw URLs, stays off.
accesslog = None
# Only from these addresses are X-Forwarded-Proto and friends believed: 127.0.0.1 by
# default; on a PaaS whose router is the only way in, FORWARDED_ALLOW_IPS='*'.
forwarded_allow_ips = server.forwarded_allow_ips
# gunicorn 27's control socket (a fixed path in $HOME) is not needed on a PaaS, and
# two instances on one machine would fight over it.
control_socket_disable = True
# gunicorn's largest: a list URL with a full cursor (up to 2048) and a 200-character search
# percent-encoded can pass the 4094 default, and gunicorn would answer 414 itself.
limit_request_line = 8190
# API.md: header fields of up to 8 KiB each are always served (this counts the CRLF).
limit_request_field_size = 8192 + 2


def on_starting(server: object) -> None:
    """Check the settings and the database once, in the master, before any worker starts.

    A missing or malformed setting then stops gunicorn with one line that says what
    to set, instead of every worker failing to boot with a traceback, and so does a
    database that refuses the service for good (no such database, a wrong password): the
    platform keeps the previous release. A database whose migrations have not run is
    named in the log before the first request fails.
    """
    from tasks_api import db, logs
    from tasks_api.config import ConfigError, Settings

    try:
        settings = Settings.from_env()
    except ConfigError as error:
        raise SystemExit(f"tasks_api: {error}") from None
    logs.configure(settings)
    if not db.start_check(settings):
        raise SystemExit(1)  # said in the log: the database refuses the service for good


def pre_fork(server: object, worker: object) -> None:
    """Move the preloaded app's objects out of the collector's reach: a collection in a
    worker would otherwise write to every page they share with the master (Python's
    docs, gc.freeze). Then collect again, in the master and in the worker it forks, over
    what each allocates from here on."""
    gc.freeze()
    gc.enable()
