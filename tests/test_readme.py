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


@pytest.mark.parametrize("command", [["make", "token"], ["make", "-e", "token"]])
def test_make_token_refuses_the_login_name_in_the_environment(
    clone: Path, command: list[str]
) -> None:
    """Every shell has USER (the login name): a token for it would get 403 on every call."""
    result = subprocess.run(
        command,
        cwd=clone,
        env={**shell_env(), "USER": "alice"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert result.stdout == ""  # nothing a `$(make token)` would take for a token
    (line,) = result.stderr.splitlines()
    assert "make token USER=alice" in line and "login name" in line, line
    assert not (clone / "instance").exists()  # refused before anything else ran


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


API_PAGE = (ROOT / "docs" / "api.md").read_text()


def section(page: str, heading: str) -> str:
    """The text of `page` under `heading`, up to the next heading of the same level."""
    level = heading.split(" ", 1)[0]
    return page.split(heading + "\n", 1)[1].split(f"\n{level} ", 1)[0]


def api_page_shell_blocks() -> list[str]:
    """docs/api.md's shell blocks, in order: all but the typed client's npm commands, which
    tests/test_docs_typescript.py checks."""
    blocks = re.findall(r"^```sh\n(.*?)^```", API_PAGE, re.M | re.S)
    typed = section(API_PAGE, "## Typed client")
    return [str(block) for block in blocks if block not in typed]


def shown_outputs(block: str) -> list[tuple[int, str]]:
    """Each output the block shows: the comment lines right under a command (a description
    comes after a blank line instead), with the index of the command's last line."""
    lines = block.splitlines()
    shown: list[tuple[int, str]] = []
    i = 0
    while i < len(lines) - 1:
        command = lines[i].strip() and not lines[i].startswith("#")
        if command and lines[i + 1].startswith("#"):
            assert not lines[i].endswith("\\"), lines[i]
            end = i + 1
            while end < len(lines) and lines[end].startswith("#"):
                end += 1
            shown.append((i, "\n".join(line[1:].strip() for line in lines[i + 1 : end])))
            i = end
        else:
            i += 1
    return shown


def output_pattern(shown: str) -> re.Pattern[str]:
    """What the output must contain, whitespace aside: `"..."` any one JSON string, `...`
    anything."""

    def squeeze(text: str) -> str:
        return re.sub(r"\s+", "", text)

    parts = [
        ".*?".join(re.escape(squeeze(piece)) for piece in string.split("..."))
        for string in shown.split('"..."')
    ]
    return re.compile('"[^"]*"'.join(parts), re.S)


def run_api_page(served: tuple[Path, int]) -> list[list[str]]:
    """Run docs/api.md's shell blocks in one shell, in order, against the served copy; check
    the statuses each block promises (`→ 200`) and each output shown; return, per block,
    what it printed up to each output shown."""
    clone, port = served
    blocks = api_page_shell_blocks()
    script = ["set -euo pipefail"]
    for number, block in enumerate(blocks):
        script.append(f"printf '\\n@@block {number}\\n'")
        after = {line for line, _ in shown_outputs(block)}
        for i, line in enumerate(block.splitlines()):
            script.append(line)
            if i in after:
                script.append("printf '\\n@@shown\\n'")
    local = "\n".join(script).replace("127.0.0.1:8000", f"127.0.0.1:{port}")

    result = subprocess.run(
        ["bash", "-c", local],
        cwd=clone,
        env=shell_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    printed = result.stdout.split("\n@@block ")[1:]
    assert len(printed) == len(blocks), result.stdout
    segments = []
    for block, out in zip(blocks, printed, strict=True):
        promised = re.findall(r"→ (\d{3})", block)
        answered = re.findall(r"HTTP/1\.1 (\d{3}) ", out)  # bodies end without a newline
        assert answered == promised, block + out
        parts = out.split("\n", 1)[1].split("\n@@shown\n")
        for (_, shown), part in zip(shown_outputs(block), parts, strict=False):
            expected = shown.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
            assert output_pattern(expected).search(re.sub(r"\s+", "", part)), (
                f"docs/api.md shows:\n{shown}\nthe server said:\n{part}"
            )
        segments.append(parts[: len(shown_outputs(block))])
    return segments


def test_the_shell_examples_in_docs_api_run_in_order_and_show_what_the_server_says(
    served: tuple[Path, int],
) -> None:
    blocks = api_page_shell_blocks()
    assert len(blocks) >= 8  # the set-up, listing, organizing, bulk, sync, ETags, keys, errors
    for block in blocks:
        # An ETag is captured from a response, as a client does, never typed in.
        assert not re.search(r"""If-(None-)?Match: *\\?["']?\\?"?[0-9*]""", block), block
        assert not re.search(r'"\\"[0-9]+\\""', block), block

    segments = run_api_page(served)

    organizing = segments[api_page_shell_blocks().index(only_sh(section(API_PAGE, ORGANIZING)))]
    feed = json.loads(organizing[-1].rsplit("\n", 1)[-1])  # the last body, on one line
    assert len(feed["deleted_lists"]) == 1 and len(feed["deleted"]) == 3
    assert (feed["changes"], feed["lists"]) == ([], [])
    bulk = segments[api_page_shell_blocks().index(only_sh(section(API_PAGE, "## Many at once")))]
    last = json.loads(bulk[-1].rsplit("\n", 1)[-1])
    assert [r["status"] for r in last["results"]] == [204, 204]


ORGANIZING = "## Organizing: lists, subtasks and the manual order"


def only_sh(text: str) -> str:
    (block,) = re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S)
    return str(block)


def test_what_the_docs_check_is_what_they_show() -> None:
    """The output matcher: `...` and `"..."` stand for what varies, nothing else does."""
    assert output_pattern('{"deleted": ["...", "..."]}').search('{"deleted":["a","b"]}')
    assert not output_pattern('{"deleted": ["...", "..."]}').search('{"deleted":["a"]}')
    assert not output_pattern('{"deleted": ["..."]}').search('{"deleted":["a","b"]}')
    assert output_pattern('HTTP/1.1 200 OK\n...\nETag: "2"').search('HTTP/1.1200OKX:1ETag:"2"')
    assert not output_pattern('ETag: "2"').search('ETag:"3"')
    assert shown_outputs("# a → 200\ncurl x\n# out 1\n# out 2\n\n# b\ncurl y\n# out 3\n") == [
        (1, "out 1\nout 2"),
        (6, "out 3"),
    ]
