# make run    serve the API on the embedded SQLite database at http://127.0.0.1:8000
# make test   run the test suite (PostgreSQL too, when one can be found or started)
# make token USER=alice    print a bearer token for a user of the embedded database
# make lint   ruff and mypy, as CI runs them
#
# Each sets up .venv first (again whenever requirements.txt or pyproject.toml change).

PYTHON ?= python3
BIN := .venv/bin

.PHONY: run test token token-user lint

run: .venv/.runtime
	@PORT=$$($(BIN)/python -c 'import os, dotenv; dotenv.load_dotenv(); print(os.environ.get("PORT") or 8000)'); \
	echo "tasks_api: serving http://127.0.0.1:$$PORT (docs: http://127.0.0.1:$$PORT/docs). Ctrl-C stops it."; \
	echo "tasks_api: in another terminal, get a token with: make token USER=alice"; \
	exec $(BIN)/python -m tasks_api --bind "127.0.0.1:$$PORT"

test: .venv/.dev
	$(BIN)/pytest

token: token-user .venv/.runtime
	@$(BIN)/flask --app wsgi token "$(USER)"

# Whose token is said on make's command line: USER is also every shell's login name, and a
# token for that is refused (403) by every call to another user's tasks.
token-user:
	$(if $(filter command line,$(origin USER)),,$(error tasks_api: say whose token on make's command line, such as: make token USER=alice (not the login name in $$USER)))

lint: .venv/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

.venv/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "tasks_api needs Python 3.11 or newer; run: make PYTHON=python3.12 ..." >&2; exit 1; }
	@echo "tasks_api: creating .venv" >&2
	@$(PYTHON) -m venv .venv

# Set-up speaks on stderr: stdout is for results (`$$(make token USER=alice)`).
.venv/.runtime: requirements.txt .venv/bin/python
	@echo "tasks_api: installing requirements.txt into .venv" >&2
	@$(BIN)/python -m pip install --quiet -r requirements.txt >&2
	@touch $@

# The dev group needs pip 25.1 or newer (`--group`).
.venv/.dev: requirements.txt pyproject.toml .venv/bin/python
	@echo "tasks_api: installing requirements.txt and the dev group into .venv" >&2
	@$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1" >&2
	@$(BIN)/python -m pip install --quiet -r requirements.txt --group dev >&2
	@touch .venv/.runtime $@
