"""``GET /openapi.json`` and ``GET /docs`` on the HTTP port of ``fnmesh serve``: every route of an
fnmesh app (pydantic models) and of an iii-sdk worker (``request_format``/``response_format``),
valid OpenAPI 3.1 (openapi-spec-validator), following routes as they come and go, and a docs
page whose assets the engine serves itself."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from referencing.exceptions import Unresolvable

from harness import bind, fnmesh_run, sdk_client, serve, wait_until

SHOP = textwrap.dedent(
    """
    import fnmesh
    import pydantic


    class NewOrder(pydantic.BaseModel):
        sku: str
        qty: int


    class Order(pydantic.BaseModel):
        id: int
        sku: str


    class CreateRequest(fnmesh.HttpRequest):
        body: NewOrder


    class Created(fnmesh.HttpResponse):
        body: Order


    app = fnmesh.App("shop")


    @app.http("POST", "/orders")
    @app.function("shop::create", description="Create an order")
    async def create(request: CreateRequest) -> Created:
        return Created(status_code=201, body=Order(id=7, sku=request.body.sku))


    @app.http("GET", "/orders/:id")
    @app.function("shop::get")
    async def get(request: fnmesh.HttpRequest) -> fnmesh.HttpResponse:
        return fnmesh.HttpResponse(body={"id": request.path_params["id"]})
    """
)


class Greeting(pydantic.BaseModel):
    name: str


class Query(pydantic.BaseModel):
    polite: str


class GreetRequest(pydantic.BaseModel):
    body: Greeting
    query_params: Query


class Greeted(pydantic.BaseModel):
    text: str


class GreetResponse(pydantic.BaseModel):
    status_code: int = 200
    body: Greeted


@dataclass
class Setup:
    url: str
    http: httpx.Client
    iii: Any


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("openapi")
    (folder / "shop.py").write_text(SHOP)
    with serve(["--log-level", "warn"]) as engine:
        line = engine.wait_for_log(r"HTTP triggers at (http://\S+)")
        match = re.search(r"(http://\S+)", line)
        assert match is not None
        with (
            fnmesh_run([str(folder / "shop.py"), "--connect", engine.url]),
            sdk_client(engine.url, "alpha") as iii,
            httpx.Client(base_url=match.group(1), timeout=10) as http,
        ):
            iii.register_function(
                "alpha::greet",
                lambda data: {"body": {"text": f"hello {data['body']['name']}"}},
                description="Greet someone",
                request_format=GreetRequest.model_json_schema(),
                response_format=GreetResponse.model_json_schema(),
            )
            greet = bind(iii, "http", "alpha::greet", {"api_path": "greet/:lang", "http_method": "POST"})
            try:
                setup = Setup(engine.url, http, iii)
                wait_until(lambda: "/greet/{lang}" in document(setup)["paths"], what="the greet route")
                yield setup
            finally:
                greet.unregister()


def document(setup: Setup) -> dict[str, Any]:
    response = setup.http.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """A schema, its ``$ref`` followed into ``components/schemas``."""
    ref = schema.get("$ref")
    if ref is None:
        return schema
    prefix = "#/components/schemas/"
    assert ref.startswith(prefix), ref
    found: dict[str, Any] = doc["components"]["schemas"][ref[len(prefix) :]]
    return found


def test_the_document_is_valid_openapi_3_1(setup: Setup) -> None:
    doc = document(setup)
    assert doc["openapi"] == "3.1.0"
    validate(doc, cls=OpenAPIV31SpecValidator)
    # The validator does check: a reference to a schema that is not there is refused.
    broken = {**doc, "components": {"schemas": {}}}
    with pytest.raises((OpenAPIValidationError, Unresolvable)):
        validate(broken, cls=OpenAPIV31SpecValidator)
    with pytest.raises(OpenAPIValidationError):
        validate({**doc, "openapi": "3.1.0", "paths": {"no-slash": {}}}, cls=OpenAPIV31SpecValidator)


def test_every_route_with_its_parameters(setup: Setup) -> None:
    paths = document(setup)["paths"]
    assert {p: sorted(ops) for p, ops in paths.items()} == {
        "/orders": ["post"],
        "/orders/{id}": ["get"],
        "/greet/{lang}": ["post"],
    }
    get = paths["/orders/{id}"]["get"]
    assert get["operationId"] == "shop::get"
    assert get["tags"] == ["shop"]
    assert get["parameters"] == [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
    assert "requestBody" not in get
    greet = paths["/greet/{lang}"]["post"]
    assert greet["summary"] == "Greet someone"
    assert greet["tags"] == ["alpha"]
    by_name = {p["name"]: p for p in greet["parameters"]}
    assert by_name["lang"]["in"] == "path"
    assert by_name["polite"] == {
        "name": "polite",
        "in": "query",
        "required": True,
        "schema": {"title": "Polite", "type": "string"},
    }


def test_bodies_come_from_the_pydantic_models(setup: Setup) -> None:
    doc = document(setup)
    create = doc["paths"]["/orders"]["post"]
    assert create["summary"] == "Create an order"
    request = create["requestBody"]
    assert request["required"] is True
    new_order = resolve(doc, request["content"]["application/json"]["schema"])
    assert new_order["properties"] == {
        "sku": {"title": "Sku", "type": "string"},
        "qty": {"title": "Qty", "type": "integer"},
    }
    order = resolve(doc, create["responses"]["200"]["content"]["application/json"]["schema"])
    assert order["properties"] == {
        "id": {"title": "Id", "type": "integer"},
        "sku": {"title": "Sku", "type": "string"},
    }
    # The iii worker's request_format / response_format.
    greet = doc["paths"]["/greet/{lang}"]["post"]
    greeting = resolve(doc, greet["requestBody"]["content"]["application/json"]["schema"])
    assert greeting["properties"] == {"name": {"title": "Name", "type": "string"}}
    greeted = resolve(doc, greet["responses"]["200"]["content"]["application/json"]["schema"])
    assert greeted["properties"] == {"text": {"title": "Text", "type": "string"}}
    # Errors: the trigger's envelope.
    error = resolve(doc, create["responses"]["default"]["content"]["application/json"]["schema"])
    assert error["required"] == ["error"]
    # A route's answer matches what the document says.
    answer = setup.http.post("/greet/en", params={"polite": "yes"}, json={"name": "Ada"})
    assert answer.status_code == 200
    assert answer.json() == {"text": "hello Ada"}


def test_routes_registered_later_appear_and_go_without_restart(setup: Setup) -> None:
    assert "/later" not in document(setup)["paths"]
    later = bind(setup.iii, "http", "alpha::greet", {"api_path": "later", "http_method": "PUT"})
    try:
        wait_until(lambda: "/later" in document(setup)["paths"], what="the new route")
        assert sorted(document(setup)["paths"]["/later"]) == ["put"]
        validate(document(setup), cls=OpenAPIV31SpecValidator)
    finally:
        later.unregister()
    wait_until(lambda: "/later" not in document(setup)["paths"], what="the route to go")


def test_a_route_of_the_user_wins_over_the_engine_s_paths(setup: Setup) -> None:
    setup.iii.register_function("alpha::mine", lambda data: {"body": {"mine": True}})
    mine = bind(setup.iii, "http", "alpha::mine", {"api_path": "openapi.json"})
    try:
        wait_until(lambda: setup.http.get("/openapi.json").json() == {"mine": True}, what="the user's route")
    finally:
        mine.unregister()
    wait_until(lambda: "paths" in setup.http.get("/openapi.json").json(), what="the engine's document")
    # Other methods on the engine's paths are not answered.
    assert setup.http.post("/openapi.json").status_code == 404


def test_the_docs_page_and_its_assets_come_from_the_engine(setup: Setup) -> None:
    page = setup.http.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sorted(assets) == ["/docs/docs.css", "/docs/docs.js", "/openapi.json"]
    types = {"/docs/docs.css": "text/css", "/docs/docs.js": "text/javascript"}
    for asset, kind in types.items():
        served = setup.http.get(asset)
        assert served.status_code == 200
        assert served.headers["content-type"].startswith(kind)
        # Nothing from elsewhere: no absolute URL, no CDN.
        assert not re.search(r"https?://", served.text), asset
    assert 'fetch("/openapi.json"' in setup.http.get("/docs/docs.js").text
    assert setup.http.get("/docs/").status_code == 200
    assert setup.http.get("/docs/nosuch.js").status_code == 404


def test_an_engine_without_routes_serves_an_empty_document(tmp_path: Path) -> None:
    with serve(["--log-level", "warn"]) as engine:
        line = engine.wait_for_log(r"HTTP triggers at (http://\S+)")
        match = re.search(r"(http://\S+)", line)
        assert match is not None
        doc = httpx.get(f"{match.group(1)}/openapi.json", timeout=10).json()
    assert doc["paths"] == {}
    validate(doc, cls=OpenAPIV31SpecValidator)
