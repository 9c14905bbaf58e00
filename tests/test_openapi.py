"""The OpenAPI document (pushauth/web/openapi.py) is true: it lists exactly the server's routes, it is a
valid OpenAPI 3.1 shape, and the request schemas it publishes are the ones validation uses."""

from __future__ import annotations

from typing import Any

import aiohttp
from support import RunningServer

from pushauth.web.openapi import OPERATIONS, PAGES


def _routes(server: RunningServer) -> set[tuple[str, str]]:
    out = set()
    for route in server.app.router.routes():
        if route.method in ("HEAD", "OPTIONS", "*"):
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix")
        out.add((route.method, str(path)))
    return out


async def _doc(http: aiohttp.ClientSession, server: RunningServer) -> dict[str, Any]:
    async with http.get(server.url + "/openapi.json") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        return dict(await resp.json())


async def test_every_route_is_documented_and_every_documented_route_exists(
        server: RunningServer, http: aiohttp.ClientSession) -> None:
    doc = await _doc(http, server)
    documented = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    routes = _routes(server)
    # /demo/* exists only in demo mode; everything else must match both ways.
    demo = {(op.method, op.path) for op in PAGES if op.path.startswith("/demo/")}
    assert routes - documented == set(), f"routes missing from /openapi.json: {sorted(routes - documented)}"
    assert documented - routes - demo == set(), (
        f"documented but not served: {sorted(documented - routes - demo)}")
    assert len(OPERATIONS) + len(PAGES) == len(documented)


async def test_document_shape(server: RunningServer, http: aiohttp.ClientSession) -> None:
    doc = await _doc(http, server)
    assert doc["openapi"] == "3.1.0"
    schemas = doc["components"]["schemas"]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["responses"], (method, path)
            params = {p["name"] for p in op.get("parameters", [])}
            assert params == {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}, path
            body = op.get("requestBody")
            if body is not None:
                ref = body["content"]["application/json"]["schema"]["$ref"]
                assert ref.rsplit("/", 1)[1] in schemas, ref
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    assert response["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
            if op.get("security"):
                assert set(op["security"][0]) <= set(doc["components"]["securitySchemes"])
    create = schemas["CreateChallenge"]
    assert set(create["properties"]) == {"user", "context", "remember_token", "browser_id", "ttl_s"}
    assert create["required"] == ["user"]
    assert schemas["Error"]["required"] == ["error", "message"]


async def test_documented_errors_happen_in_the_documented_shape(server: RunningServer,
                                                                 http: aiohttp.ClientSession) -> None:
    """A sample of each documented error status, produced for real, has exactly the Error shape."""
    doc = await _doc(http, server)
    cases = [("POST", "/v1/challenges", {"Authorization": "Bearer nope"}, b"{}", 401),
             ("GET", "/v1/alerts", {}, b"", 401),
             ("POST", "/v1/challenges", {"Authorization": "Bearer " + _api_key()}, b"{bad json", 400),
             ("POST", "/v1/challenges", {"Authorization": "Bearer " + _api_key()}, b'{"user": 1}', 422)]
    for method, path, headers, body, status in cases:
        assert str(status) in doc["paths"][path][method.lower()]["responses"], (method, path, status)
        async with http.request(method, server.url + path, headers=headers, data=body) as resp:
            assert resp.status == status
            got = await resp.json()
            assert set(got) == {"error", "message"}, got


def _api_key() -> str:
    from support import API_KEY
    return API_KEY
