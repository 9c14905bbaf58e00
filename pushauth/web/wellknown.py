"""Public, unauthenticated endpoints."""

from __future__ import annotations

from aiohttp import web

from pushauth.web import io
from pushauth.web.state import KEYRING

routes = web.RouteTableDef()


@routes.get("/.well-known/jwks.json")
async def jwks(request: web.Request) -> web.Response:
    response = io.json(request.app[KEYRING].ring.jwks())
    # Short: after a rotation, verifiers should see the new key within a minute.
    response.headers["Cache-Control"] = "public, max-age=60"
    return response
