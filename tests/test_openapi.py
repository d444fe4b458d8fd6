"""The API's description: one OpenAPI 3.1 document that lists exactly the routes the daemon
serves, with their roles and the request types' own schemas; served at /openapi.json, and shown
at /docs from vendored files, open like /healthz but behind the same Host and Origin checks."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from openapi_spec_validator import validate

from actors import request, traci_commands
from actors.request import DefaultLimits
from supervisor import api, docs, openapi, tokens
from supervisor.access import Route, canonical
from tests.harness.daemon import make_token
from tests.harness.http import ask

ALL_ROUTES = api.ROUTES + api.TEST_ROUTES


def document(routes: list[Route] = ALL_ROUTES) -> dict[str, Any]:
    return openapi.build(routes, DefaultLimits())


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}


def test_the_document_is_valid_openapi_3_1():
    doc = document()
    assert doc["openapi"] == "3.1.0"
    validate(doc)


def test_every_route_is_documented_and_every_documented_route_exists():
    routes = {(r.method, canonical(r.path)) for r in ALL_ROUTES}
    assert set(openapi.OPERATIONS) - routes == set(), "documented, but no such route"
    assert routes - set(openapi.OPERATIONS) == set(), "a route the document lacks"
    assert documented(document()) == routes


def test_a_route_without_a_description_cannot_be_served():
    async def handler(_request: web.Request) -> web.Response:
        return web.json_response({})

    new = Route("GET", "/v1/undocumented", handler, tokens.Role.reader)
    with pytest.raises(KeyError):
        document([*ALL_ROUTES, new])


def test_the_document_lists_what_the_app_serves():
    """The router of the app the daemon runs, not only the table it is built from."""
    app = web.Application()
    for route in ALL_ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    served = {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    assert served == documented(document())


def test_each_operation_names_its_role_and_its_auth():
    doc = document()
    for route in ALL_ROUTES:
        op = doc["paths"][canonical(route.path)][route.method.lower()]
        role = route.role.name if route.role is not None else None
        assert op["x-role"] == role, route.path
        if role is None:
            assert op["security"] == [] and "401" not in op["responses"]
            assert "Open to all" in op["description"]
        else:
            assert op["security"] == [{"bearer": []}]
            assert {"401", "403"} <= set(op["responses"])
            assert f"role **{role}**" in op["description"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_path_parameters_and_bodies_match_the_routes():
    doc = document()
    for route in ALL_ROUTES:
        op = doc["paths"][canonical(route.path)][route.method.lower()]
        in_path = set(re.findall(r"{(\w+)}", canonical(route.path)))
        declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert declared == in_path, route.path
        media = {"json": "application/json", "multipart": "multipart/form-data"}.get(route.body)
        if media is None:
            assert "requestBody" not in op, route.path
        else:
            assert list(op["requestBody"]["content"]) == [media], route.path


def test_every_refusal_is_the_common_error_body():
    doc = document()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for code, answer in op["responses"].items():
                if int(code) >= 400 and (path, code) != ("/healthz", "503"):
                    assert answer == {"$ref": f"#/components/responses/E{code}"}, (path, method)
    error = doc["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]


def test_the_request_schemas_are_the_validators_own():
    schemas = document()["components"]["schemas"]
    session = schemas["SessionRequest"]
    assert set(session["properties"]) == request.FIELDS
    assert session["properties"] == request.json_schema(DefaultLimits())["properties"]
    assert schemas["Commands"] == traci_commands.json_schema()
    sweep = schemas["SweepRequest"]
    assert set(sweep["properties"]) == request.FIELDS - {"seed", "replay_of"} | {
        "seeds",
        "runs",
        "vary",
    }


def test_the_daemons_limits_bound_the_documented_values():
    from tests.unit.test_request import TightLimits

    session = openapi.build(ALL_ROUTES, TightLimits())["components"]["schemas"]["SessionRequest"]
    assert session["properties"]["end"]["anyOf"][0]["maximum"] == TightLimits().end_limit


def test_the_vendored_files_are_the_ones_recorded():
    table = (docs.STATIC / "VENDORED.md").read_text()
    recorded = dict(
        re.findall(r"^\| (\S+) \| swagger-ui-dist@[\d.]+[^|]*\| ([0-9a-f]{64}) \|", table, re.M)
    )
    assert set(recorded) == {"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"}
    for name, digest in recorded.items():
        assert hashlib.sha256((docs.STATIC / name).read_bytes()).hexdigest() == digest, name
    for name in docs.FILES:
        assert (docs.STATIC / name).is_file(), name
    assert "Apache License" in (docs.STATIC / "LICENSE").read_text()


def test_the_docs_files_ship_with_the_package():
    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    assert '"static/docs/*"' in pyproject


# ---- served by a daemon ------------------------------------------------------------------------


async def test_the_daemon_serves_its_document_and_docs_page_without_a_token(daemons, db_url, http):
    admin = await make_token(db_url, "root", "admin")  # a daemon that needs tokens
    daemon = await daemons.start(db_url)
    status, served, headers = await ask(http, "GET", daemon.url + "/openapi.json")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    validate(served)
    # No test hooks.
    assert documented(served) == {(r.method, canonical(r.path)) for r in api.ROUTES}
    # The daemon's own limits, not the defaults, bound what it documents.
    assert served["components"]["schemas"]["SessionRequest"]["properties"]["end"]["anyOf"][0][
        "maximum"
    ] == min(1e9, DefaultLimits().end_limit)

    status, page, headers = await ask(http, "GET", daemon.url + "/docs")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    # Every file the page loads is the daemon's own, and is served.
    loaded = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert loaded and all(u.startswith("docs/") for u in loaded), loaded
    for rel in loaded:
        async with http.get(f"{daemon.url}/{rel}") as r:
            assert r.status == 200 and await r.read(), rel
    init = (await ask(http, "GET", daemon.url + "/docs/init.js"))[1]
    assert 'url: "openapi.json"' in init and "validatorUrl: null" in init

    # Nothing but the listed files: not a path, not the licence notes, not the Python around.
    for name in ("VENDORED.md", "..%2F..%2Fapi.py", "index.html.bak"):
        status, body, _ = await ask(http, "GET", f"{daemon.url}/docs/{name}")
        assert status == 404 and "error" in body, (name, status, body)
    # The dots resolved away, it is the path above: the dashboard's page, not a file.
    status, body, _ = await ask(http, "GET", f"{daemon.url}/docs/%2e%2e")
    assert status == 200 and "<!doctype html>" in body
    # The rest of the API still needs the token.
    assert (await ask(http, "GET", daemon.url + "/v1/sessions"))[0] == 401
    bearer = {"Authorization": f"Bearer {admin}"}
    assert (await ask(http, "GET", daemon.url + "/v1/sessions", headers=bearer))[0] == 200


async def test_the_docs_pass_the_host_and_origin_checks(daemons, db_url, http):
    daemon = await daemons.start(db_url)
    for path in ("/openapi.json", "/docs", "/docs/swagger-ui-bundle.js"):
        status, body, _ = await ask(
            http, "GET", daemon.url + path, headers={"Host": "rebound.attacker.example"}
        )
        assert status == 421 and "Host" in body["error"], path
        status, body, _ = await ask(
            http, "GET", daemon.url + path, headers={"Origin": "http://attacker.example"}
        )
        assert status == 403 and "attacker.example" in body["error"], path
