"""ETags, If-None-Match and If-Match: no lost updates."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tasks_api.repository import changing, deleting, lists, shortcuts
from tests.support import assert_problem


def test_every_response_with_a_task_has_its_etag(client: FlaskClient, tasks_url: str) -> None:
    created = client.post(tasks_url, json={"title": "x"})
    url = created.headers["Location"]
    assert created.headers["ETag"] == '"1"'

    assert client.get(url).headers["ETag"] == '"1"'
    assert client.put(url, json={"title": "y"}).headers["ETag"] == '"2"'
    assert client.patch(f"{url}/complete").headers["ETag"] == '"3"'
    assert client.patch(f"{url}/complete", json={"completed": False}).headers["ETag"] == '"4"'
    assert client.get(url).get_json()["version"] == 4


@pytest.mark.parametrize("sent", ['"1"', '"7", "1"', "*", 'W/"1"'])
def test_if_none_match_with_the_current_version_is_304(
    client: FlaskClient, task_url: str, sent: str
) -> None:
    response = client.get(task_url, headers={"If-None-Match": sent})

    assert response.status_code == 304
    assert response.data == b""
    assert response.headers["ETag"] == '"1"'


def test_if_none_match_with_an_old_version_is_200(client: FlaskClient, task_url: str) -> None:
    client.put(task_url, json={"title": "changed"})

    response = client.get(task_url, headers={"If-None-Match": '"1"'})

    assert response.status_code == 200
    assert response.get_json()["title"] == "changed"


WRITES = [
    ("PUT", "", {"title": "mine"}),
    ("PATCH", "/complete", None),
    ("PATCH", "/complete", {"completed": True}),
    ("DELETE", "", None),
]


@pytest.mark.parametrize(("method", "suffix", "body"), WRITES)
@pytest.mark.parametrize("sent", ['"1"', '"9", "1"', "*"])
def test_if_match_with_the_current_version_applies(
    client: FlaskClient,
    task_url: str,
    method: str,
    suffix: str,
    body: dict[str, Any] | None,
    sent: str,
) -> None:
    response = client.open(task_url + suffix, method=method, json=body, headers={"If-Match": sent})

    assert response.status_code == (204 if method == "DELETE" else 200)
    if method != "DELETE":
        assert response.headers["ETag"] == '"2"'


@pytest.mark.parametrize(("method", "suffix", "body"), WRITES)
@pytest.mark.parametrize(
    "sent", ['"2"', 'W/"1"', '"abc"', '""', '"\u00b2"', '"99999999999999999999"', '"1', "W/"]
)
def test_if_match_with_another_version_is_412_and_changes_nothing(
    client: FlaskClient,
    task_url: str,
    task: dict[str, Any],
    method: str,
    suffix: str,
    body: dict[str, Any] | None,
    sent: str,
) -> None:
    response = client.open(task_url + suffix, method=method, json=body, headers={"If-Match": sent})

    assert_problem(response, 412)
    assert response.headers["ETag"] == '"1"'
    assert client.get(task_url).get_json() == task


@pytest.mark.parametrize(("method", "suffix", "body"), WRITES)
def test_if_match_on_a_missing_task_is_404(
    client: FlaskClient, tasks_url: str, method: str, suffix: str, body: dict[str, Any] | None
) -> None:
    url = f"{tasks_url}/6f1c2a9e-8a0b-4a53-9f57-3c1e4f2b9d10{suffix}"

    assert_problem(client.open(url, method=method, json=body, headers={"If-Match": '"1"'}), 404)


@pytest.mark.parametrize(("method", "suffix", "body"), WRITES)
def test_if_match_is_one_statement_whatever_its_number_of_tags(
    client: FlaskClient, task_url: str, method: str, suffix: str, body: dict[str, Any] | None
) -> None:
    # A statement for each number of tags was one more cached statement for each number
    # a client chose to send: one worker grew from 91 to 854 MiB in ~85 requests.
    def sent(count: int, current: bool) -> str:
        return ", ".join(f'"{n + 100}"' for n in range(count - 1)) + (
            ', "1"' if current else ', "9"'
        )

    statements = [
        changing._change,
        deleting._delete,
        shortcuts._plain_update,
        lists._change,
        lists._delete,
    ]
    before = sum(cached.cache_info().currsize for cached in statements)
    for count in (2, 3, 7, 40, 63):
        response = client.open(
            task_url + suffix, method=method, json=body, headers={"If-Match": sent(count, False)}
        )
        assert_problem(response, 412)
    added = sum(cached.cache_info().currsize for cached in statements) - before

    response = client.open(
        task_url + suffix, method=method, json=body, headers={"If-Match": sent(64, True)}
    )
    assert response.status_code == (204 if method == "DELETE" else 200)
    assert added <= 1


@pytest.mark.parametrize(("method", "suffix", "body"), WRITES)
def test_if_match_of_more_than_64_tags_is_422_and_changes_nothing(
    client: FlaskClient,
    task_url: str,
    task: dict[str, Any],
    method: str,
    suffix: str,
    body: dict[str, Any] | None,
) -> None:
    sent = ", ".join(['"1"', *(f'W/"{n + 100}"' for n in range(64))])

    response = client.open(task_url + suffix, method=method, json=body, headers={"If-Match": sent})

    assert list(assert_problem(response, 422)["errors"]) == ["If-Match"]
    assert client.get(task_url).get_json() == task


@pytest.mark.parametrize("sent", ["", "   "])
def test_an_empty_if_match_counts_as_none(client: FlaskClient, task_url: str, sent: str) -> None:
    response = client.put(task_url, json={"title": "applied"}, headers={"If-Match": sent})

    assert response.status_code == 200


def test_a_stale_delete_keeps_the_task(client: FlaskClient, task_url: str) -> None:
    client.patch(f"{task_url}/complete")

    assert_problem(client.delete(task_url, headers={"If-Match": '"1"'}), 412)
    assert client.delete(task_url, headers={"If-Match": '"2"'}).status_code == 204


def test_of_racing_writes_with_the_same_if_match_exactly_one_applies(
    app: Flask, task_url: str, task: dict[str, Any]
) -> None:
    def put(n: int) -> int:
        client = app.test_client()
        return client.put(
            task_url, json={"title": f"edit {n}"}, headers={"If-Match": '"1"'}
        ).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(put, range(16)))

    assert sorted(statuses) == [200] + [412] * 15
    final = app.test_client().get(task_url).get_json()
    assert final["version"] == 2
