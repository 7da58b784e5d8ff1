"""The OpenAPI document and the docs page: complete, readable, and served offline."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

import pytest
from flask.testing import FlaskClient

# Every operation that takes a token: its own errors, and the HTTP server's limits on
# the request line (a list URL with a long `q` or `cursor`) and on header fields.
SECURED = {401, 403, 414, 431, 500}
OPERATIONS = {
    ("post", "/api/{user_id}/tasks"): (
        "createTask",
        {201, 400, 409, 413, 415, 422, 503} | SECURED,
    ),
    ("get", "/api/{user_id}/tasks"): ("listTasks", {200, 422, 503} | SECURED),
    ("get", "/api/{user_id}/tasks/{task_id}"): ("getTask", {200, 304, 404, 422, 503} | SECURED),
    ("put", "/api/{user_id}/tasks/{task_id}"): (
        "updateTask",
        {200, 400, 404, 409, 412, 413, 415, 422, 503} | SECURED,
    ),
    ("delete", "/api/{user_id}/tasks/{task_id}"): (
        "deleteTask",
        {204, 404, 412, 422, 503} | SECURED,
    ),
    ("patch", "/api/{user_id}/tasks/{task_id}/complete"): (
        "toggleTaskCompletion",
        {200, 400, 404, 412, 413, 415, 422, 503} | SECURED,
    ),
    ("get", "/api/{user_id}/tasks/changes"): ("listTaskChanges", {200, 410, 422, 503} | SECURED),
    ("post", "/api/{user_id}/tasks/{task_id}/move"): (
        "moveTask",
        {200, 400, 404, 409, 412, 413, 415, 422, 503} | SECURED,
    ),
    ("post", "/api/{user_id}/tasks/bulk"): (
        "bulkTasks",
        {200, 400, 409, 413, 415, 422, 503} | SECURED,
    ),
    ("post", "/api/{user_id}/lists"): ("createList", {201, 400, 409, 413, 415, 422, 503} | SECURED),
    ("get", "/api/{user_id}/lists"): ("listLists", {200, 422, 503} | SECURED),
    ("get", "/api/{user_id}/lists/{list_id}"): ("getList", {200, 304, 404, 422, 503} | SECURED),
    ("put", "/api/{user_id}/lists/{list_id}"): (
        "updateList",
        {200, 400, 404, 412, 413, 415, 422, 503} | SECURED,
    ),
    ("delete", "/api/{user_id}/lists/{list_id}"): (
        "deleteList",
        {204, 404, 412, 422, 503} | SECURED,
    ),
    ("post", "/api/{user_id}/lists/{list_id}/move"): (
        "moveList",
        {200, 400, 404, 412, 413, 415, 422, 503} | SECURED,
    ),
    ("get", "/health"): ("getHealth", {200, 500}),
    ("get", "/health/ready"): ("getReadiness", {200, 500, 503}),
}


@pytest.fixture
def spec(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body: dict[str, Any] = response.get_json()
    return body


def resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        *_, kind, name = node["$ref"].split("/")
        node = spec["components"][kind][name]
    return node


def test_is_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"] == "3.1.0"
    assert spec["info"]["title"] == "Tasks API"


def test_every_operation_is_named_and_documents_every_response(spec: dict[str, Any]) -> None:
    found = {
        (method, path): (op["operationId"], {int(code) for code in op["responses"]})
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method != "parameters"
    }
    assert found == OPERATIONS
    for item in spec["paths"].values():
        for method, op in item.items():
            if method != "parameters":
                assert op["summary"], op["operationId"]


def test_task_operations_require_the_bearer_token_and_health_does_not(
    spec: dict[str, Any],
) -> None:
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    assert spec["security"] == [{"bearerAuth": []}]
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            if path.startswith("/api/"):
                assert "security" not in op, op["operationId"]  # the document's default
            else:
                assert op["security"] == [], op["operationId"]
    unauthorized = spec["components"]["responses"]["Unauthorized"]
    assert "WWW-Authenticate" in unauthorized["headers"]


def test_errors_are_problem_json_and_headers_are_documented(spec: dict[str, Any]) -> None:
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            for code, ref in op["responses"].items():
                response = resolve(spec, ref)
                assert "X-Request-ID" in response["headers"], (op["operationId"], code)
                one = "{task_id}" in path or "{list_id}" in path
                if int(code) in (200, 201) and path.startswith("/api/") and one:
                    assert "ETag" in response["headers"], (op["operationId"], code)
                if int(code) >= 400:
                    assert list(response["content"]) == ["application/problem+json"]
                    schema = response["content"]["application/problem+json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Problem"}
                if int(code) == 503:
                    assert "Retry-After" in response["headers"]
    for resource in ("tasks", "lists"):
        created = spec["paths"][f"/api/{{user_id}}/{resource}"]["post"]["responses"]["201"]
        assert created["headers"]["Location"]["required"] is True
        assert {"ETag", "Idempotent-Replayed"} <= set(created["headers"])


def test_conditional_and_idempotency_headers_are_documented(spec: dict[str, Any]) -> None:
    def header_names(op: dict[str, Any]) -> set[str]:
        names = set()
        for parameter in op.get("parameters", []):
            resolved = resolve(spec, parameter)
            if resolved["in"] == "header":
                names.add(resolved["name"])
        return names

    one = spec["paths"]["/api/{user_id}/tasks/{task_id}"]
    assert header_names(one["get"]) == {"If-None-Match"}
    assert header_names(one["put"]) == {"If-Match"}
    assert header_names(one["delete"]) == {"If-Match"}
    complete = spec["paths"]["/api/{user_id}/tasks/{task_id}/complete"]["patch"]
    assert header_names(complete) == {"If-Match"}
    create = spec["paths"]["/api/{user_id}/tasks"]["post"]
    assert header_names(create) == {"Idempotency-Key"}


def test_component_schema_names_are_readable(spec: dict[str, Any]) -> None:
    assert set(spec["components"]["schemas"]) == {
        "Task",
        "Changes",
        "TaskCreate",
        "TaskUpdate",
        "TaskCompletion",
        "TaskMove",
        "List",
        "ListCreate",
        "ListUpdate",
        "ListMove",
        "Bulk",
        "BulkPlace",
        "BulkResult",
        "BulkResults",
        "Problem",
        "Health",
    }
    task = spec["components"]["schemas"]["Task"]
    assert set(task["required"]) == set(task["properties"])
    assert task["properties"]["completed_at"]["type"] == ["string", "null"]
    assert spec["components"]["schemas"]["TaskUpdate"]["minProperties"] == 1
    assert spec["components"]["schemas"]["TaskCreate"]["additionalProperties"] is False


def test_path_parameters_are_constrained(spec: dict[str, Any]) -> None:
    params = {p["name"]: p for p in spec["paths"]["/api/{user_id}/tasks/{task_id}"]["parameters"]}
    assert params["user_id"]["schema"]["maxLength"] == 128
    assert re.fullmatch(params["user_id"]["schema"]["pattern"], "google-oauth2|123")
    assert params["task_id"]["schema"] == {"type": "string", "format": "uuid"}


def test_swagger_ui_is_served_by_the_app_without_a_cdn(client: FlaskClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)

    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets, html
    for asset in assets:
        assert asset.startswith(("/docs/assets/", "/static/")), asset
        with client.get(asset) as response:
            assert response.status_code == 200, asset
            assert response.data
    assert "/openapi.json" in html


@pytest.mark.parametrize(
    "title",
    ["ok", "  padded  ", "", "   ", "\u3000\u00a0\ufeff", "\u3000x", "\x1c", "a\x00b", "\n\t"],
)
def test_title_pattern_in_the_document_agrees_with_the_server(
    client: FlaskClient, spec: dict[str, Any], tasks_url: str, title: str
) -> None:
    pattern = spec["components"]["schemas"]["TaskCreate"]["properties"]["title"]["pattern"]

    accepted = client.post(tasks_url, json={"title": title}).status_code == 201

    assert accepted is bool(re.fullmatch(pattern, title))


def test_a_list_url_the_document_allows_can_pass_the_request_line_limit(
    spec: dict[str, Any],
) -> None:
    # So the 414 is documented: gunicorn refuses request lines over 8190 bytes.
    operation = spec["paths"]["/api/{user_id}/tasks"]["get"]
    params = {p["name"]: p["schema"] for p in operation["parameters"] if p["in"] == "query"}
    longest = {
        name: "\U0001f600" * schema["maxLength"]  # 4 UTF-8 bytes, 12 percent-encoded
        for name, schema in params.items()
        if schema.get("type") == "string" and "maxLength" in schema
    }
    request_line = f"GET /api/{'u' * 128}/tasks?{urlencode(longest)} HTTP/1.1"

    assert len(request_line) > 8190
    assert "414" in operation["responses"]
    problem = resolve(spec, operation["responses"]["414"])
    assert list(problem["content"]) == ["application/problem+json"]


@pytest.mark.parametrize(
    "tag",
    [
        "home",
        " padded\t",
        "a b",
        "",
        "  ",
        "a\tb",
        "a\x01",
        "\x85x",
        "é" * 50,
        "x" * 51,
        "\u3000x",
        " " + "x" * 50 + "\x85",
        "\x85" + "x" * 51,
        "x",
        "xy",
    ],
)
def test_tag_pattern_in_the_document_agrees_with_the_server(
    client: FlaskClient, spec: dict[str, Any], tasks_url: str, tag: str
) -> None:
    item = spec["components"]["schemas"]["TaskCreate"]["properties"]["tags"]["items"]

    accepted = client.post(tasks_url, json={"title": "t", "tags": [tag]}).status_code == 201

    assert "maxLength" not in item  # the pattern holds the limit, once trimmed
    assert accepted is bool(re.fullmatch(item["pattern"], tag))


def test_the_planning_fields_are_typed_for_generated_clients(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    for name in ("Task", "TaskCreate", "TaskUpdate"):
        props = schemas[name]["properties"]
        assert props["status"]["enum"] == ["todo", "in_progress", "done"], name
        assert props["priority"]["enum"] == ["low", "medium", "high", "urgent"], name
        assert props["due_date"]["format"] == "date", name
        assert props["due_date"]["type"] == ["string", "null"], name
        assert props["tags"]["type"] == "array", name
    for name in ("TaskCreate", "TaskUpdate"):  # status and completed agree, in JSON Schema
        rules = {r["if"]["properties"]["status"]["const"]: r for r in schemas[name]["allOf"]}
        assert {s: r["then"]["properties"]["completed"]["const"] for s, r in rules.items()} == {
            "todo": False,
            "in_progress": False,
            "done": True,
        }
    create = schemas["TaskCreate"]["properties"]
    assert create["title"]["maxLength"] == 500
    assert create["description"]["maxLength"] == 8000
    assert create["tags"]["maxItems"] == 20
    assert re.fullmatch(create["tags"]["items"]["pattern"], " " + "x" * 50 + " ")
    assert not re.fullmatch(create["tags"]["items"]["pattern"], "x" * 51)

    params = {p["name"]: p for p in spec["paths"]["/api/{user_id}/tasks"]["get"]["parameters"]}
    assert params["status"]["schema"]["items"]["enum"] == ["todo", "in_progress", "done"]
    assert params["priority"]["schema"]["items"]["enum"] == ["low", "medium", "high", "urgent"]
    for name in ("due_before", "due_after"):
        assert params[name]["schema"]["format"] == "date"
    assert {"due_date", "-due_date", "priority", "-priority"} <= set(
        params["sort"]["schema"]["enum"]
    )


def test_lists_and_places_are_typed_for_generated_clients(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    listed = schemas["List"]
    assert list(listed["properties"]) == [
        "id",
        "title",
        "position",
        "open_tasks",
        "created_at",
        "updated_at",
        "version",
    ]
    assert set(listed["required"]) == set(listed["properties"])
    assert schemas["ListCreate"]["required"] == ["title"]
    assert schemas["ListCreate"]["properties"]["title"]["maxLength"] == 200
    for name in ("Task", "TaskCreate", "TaskUpdate"):
        props = schemas[name]["properties"]
        for field in ("list_id", "parent_id"):
            assert props[field]["type"] == ["string", "null"], (name, field)
            assert props[field]["format"] == "uuid", (name, field)
    assert schemas["Task"]["properties"]["position"]["type"] == "string"
    assert "position" not in schemas["TaskCreate"]["properties"]
    move = schemas["TaskMove"]["properties"]
    assert set(move) == {"after", "before", "list_id", "parent_id"}
    assert move["after"]["type"] == ["string", "null"] and move["before"]["type"] == "string"
    changes = schemas["Changes"]
    assert {"lists", "deleted_lists"} <= set(changes["required"])
    params = {p["name"]: p for p in spec["paths"]["/api/{user_id}/tasks"]["get"]["parameters"]}
    assert "position" in params["sort"]["schema"]["enum"]
    assert re.fullmatch(params["list"]["schema"]["pattern"], "inbox")
    assert re.fullmatch(params["parent"]["schema"]["pattern"], "none")


def test_array_query_parameters_are_sent_repeated_as_the_server_reads_them(
    spec: dict[str, Any],
) -> None:
    # OpenAPI's default for a query array, and what generated clients send:
    # status=todo&status=done. The server also takes commas where the description says.
    arrays = {}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":  # the path's own, in the path
                continue
            for param in operation.get("parameters", []):
                param = resolve(spec, param)
                if param["in"] == "query" and param["schema"].get("type") == "array":
                    arrays[(method, path, param["name"])] = param
    assert set(arrays) == {
        ("get", "/api/{user_id}/tasks", name) for name in ("status", "priority", "tag")
    }
    for key, param in arrays.items():
        assert (param.get("style"), param.get("explode")) == ("form", True), key
    for name in ("status", "priority"):
        assert "comma-separated" in arrays[("get", "/api/{user_id}/tasks", name)]["description"]
    assert "comma is part of" in arrays[("get", "/api/{user_id}/tasks", "tag")]["description"]
