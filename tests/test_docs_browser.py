"""/docs in a real headless browser: authorize with a token, create a task with "Try it out".

Uses Debian's chromium through Playwright (no browser download). Skipped where chromium
is missing, unless REQUIRE_BROWSER=1 (CI sets it). The screenshot lands in artifacts/.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from tasks_api import create_app
from tasks_api.config import Settings
from tests.support import SECRET, token_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"

if CHROMIUM is None:
    if os.environ.get("REQUIRE_BROWSER") == "1":
        raise RuntimeError("REQUIRE_BROWSER=1 but chromium is not installed")
    pytest.skip("chromium is not installed", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    app = create_app(Settings.from_env({"AUTH_JWT_SECRET": SECRET}), instance_path=str(tmp_path))
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def test_try_it_out_creates_a_task_with_a_pasted_token(server: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
        page.on("request", lambda r: None if r.url.startswith(server) else problems.append(r.url))
        try:
            page.goto(f"{server}/docs")
            page.get_by_role("button", name="Authorize").first.click()
            page.locator(".auth-container input").first.fill(token_for("alice"))
            page.locator(".auth-btn-wrapper button.authorize").click()
            page.locator(".auth-btn-wrapper button.btn-done").click()

            operation = page.locator("#operations-tasks-createTask")
            operation.locator(".opblock-summary").click()
            operation.get_by_role("button", name="Try it out").click()
            operation.locator('tr[data-param-name="user_id"] input').fill("alice")
            operation.locator("textarea.body-param__text").fill('{"title": "From the docs"}')
            operation.get_by_role("button", name="Execute").click()

            status = operation.locator(".live-responses-table tbody .response-col_status").first
            status.wait_for(timeout=15_000)
            status.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "docs-try-it-out.png"))
            assert status.inner_text().strip().startswith("201")
            assert "From the docs" in operation.locator(".live-responses-table").inner_text()
        finally:
            browser.close()

    # Everything came from this server, and nothing (the CSP included) complained.
    assert problems == []
