"""The README's quick start and examples run as written, in a real shell, against a real
server started the way the README says: `make run`, in a copy of the repository."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT, free_port

README = (ROOT / "README.md").read_text()
SHELL_BLOCKS = re.findall(r"^```sh\n(.*?)^```", README, re.M | re.S)


def block_with(command: str) -> str:
    (block,) = [block for block in SHELL_BLOCKS if command in block]
    return str(block)


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """The files a clone gets (tracked, or new and not ignored), sharing this .venv."""
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv to share: run `make test`")
    if shutil.which("make") is None or shutil.which("curl") is None:
        pytest.skip("needs make and curl")
    tracked = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    copy = tmp_path / "clone"
    for name in filter(None, tracked.split("\0")):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)  # times kept: make sees .venv up to date
    (copy / ".venv").symlink_to(ROOT / ".venv")
    return copy


def shell_env() -> dict[str, str]:
    """A person's shell: none of the service's settings, and not inside `make test`."""
    prefixes = ("DATABASE_URL", "AUTH_", "SECRET_KEY", "INSTANCE_PATH", "DB_", "WEB_", "MAKE")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes + ("MFLAGS",))}


@pytest.fixture
def served(clone: Path) -> Iterator[tuple[Path, int]]:
    """`make run` in the clone, on a free port; the clone and the port."""
    port = free_port()
    env = shell_env()
    log = (clone / "make-run.log").open("w")
    assert "make run" in block_with("make run")
    process = subprocess.Popen(
        ["make", "run"],
        cwd=clone,
        env={**env, "PORT": str(port)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # make and gunicorn stop together
    )
    try:
        _wait_for_health(port, process, clone / "make-run.log")
        yield clone, port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


def _wait_for_health(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120  # may install requirements first
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"make run exited: {log.read_text()}")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
        finally:
            connection.close()
    pytest.fail(f"make run did not serve: {log.read_text()}")


def test_make_run_serves_and_the_examples_give_the_statuses_they_promise(
    served: tuple[Path, int],
) -> None:
    clone, port = served
    examples = block_with("make token")
    # The one liberty taken: the port (8000 may be busy on a test machine).
    script = examples.replace("127.0.0.1:8000", f"127.0.0.1:{port}")

    result = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script],
        cwd=clone,
        env=shell_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    promised = re.findall(r"→ (\d{3})", examples)
    answered = re.findall(r"HTTP/1\.1 (\d{3}) ", result.stdout)  # bodies end without a newline
    assert answered == promised, result.stdout
    assert len(promised) >= 7
    assert '"title": "Buy oat milk"' in result.stdout.replace('"title":"', '"title": "')
    # The server `make run` started is the embedded default, private to its user.
    assert (clone / "instance" / "tasks.sqlite3").exists()
    log = (clone / "make-run.log").read_text()
    assert "make token USER=alice" in log and f"http://127.0.0.1:{port}/docs" in log
    assert "Traceback" not in log


def test_every_link_stays_inside_the_repository() -> None:
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            linked = (page.parent / target).resolve()
            assert linked.is_relative_to(ROOT), f"{page.name} links outside: {target}"
            assert linked.exists(), f"{page.name} links to a missing {target}"


def test_the_readme_stays_short() -> None:
    assert len(README.splitlines()) <= 250


def walk_through(served: tuple[Path, int], heading: str, ends: str) -> Any:
    """Run the shell block of docs/api.md's section `heading` (up to `ends`) against the
    served copy; check each status it promises (`→ 200`); return the last body."""
    clone, port = served
    page = (ROOT / "docs" / "api.md").read_text()
    section = page.split(heading, 1)[1].split(ends, 1)[0]
    (script,) = re.findall(r"^```sh\n(.*?)^```", section, re.M | re.S)

    result = subprocess.run(
        [
            "bash",
            "-c",
            "set -euo pipefail\n" + script.replace("127.0.0.1:8000", f"127.0.0.1:{port}"),
        ],
        cwd=clone,
        env=shell_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    promised = re.findall(r"→ (\d{3})", script)
    answered = re.findall(r"HTTP/1\.1 (\d{3}) ", result.stdout)
    assert answered == promised, result.stdout
    return json.loads(result.stdout.rsplit("\n", 1)[-1])  # the last body, on one line


def test_the_organizing_walk_through_in_docs_api_runs_as_written(
    served: tuple[Path, int],
) -> None:
    feed = walk_through(served, "## Organizing: lists, subtasks and the manual order", "\n### ")
    assert len(feed["deleted_lists"]) == 1 and len(feed["deleted"]) == 3
    assert (feed["changes"], feed["lists"]) == ([], [])


def test_the_bulk_walk_through_in_docs_api_runs_as_written(served: tuple[Path, int]) -> None:
    last = walk_through(served, "## Many at once", "\n## ")
    assert [r["status"] for r in last["results"]] == [204, 204]
