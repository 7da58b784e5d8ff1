"""Writes stay atomic when requests race: the database, not Python, applies them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flask import Flask

TOGGLES = 24


def test_concurrent_toggles_each_apply(app: Flask, task_url: str, task: dict[str, Any]) -> None:
    def toggle(_: int) -> int:
        return app.test_client().patch(f"{task_url}/complete").status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(toggle, range(TOGGLES)))

    assert statuses == [200] * TOGGLES
    final = app.test_client().get(task_url).get_json()
    assert final["version"] == 1 + TOGGLES
    assert final["completed"] is (TOGGLES % 2 == 1)


def test_concurrent_updates_of_different_fields_are_all_kept(
    app: Flask, task_url: str, task: dict[str, Any]
) -> None:
    bodies = [{"title": "new title"}, {"description": "new description"}, {"completed": True}]

    def put(body: dict[str, Any]) -> int:
        return app.test_client().put(task_url, json=body).status_code

    with ThreadPoolExecutor(max_workers=3) as pool:
        assert list(pool.map(put, bodies)) == [200, 200, 200]

    final = app.test_client().get(task_url).get_json()
    assert (final["title"], final["description"], final["completed"]) == (
        "new title",
        "new description",
        True,
    )
    assert final["version"] == 4
