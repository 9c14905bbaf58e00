"""What the OpenID Provider tests share: a scripted browser, PKCE, the phone answering."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import re
import secrets
from urllib.parse import urlencode

import aiohttp

from pushauth.phone import Phone

REDIRECT = "http://127.0.0.1:9/callback"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


class Browser:
    """A browser signing in: its own cookie jar, never following redirects by itself."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def close(self) -> None:
        await self.session.close()

    async def get(self, path: str) -> tuple[int, str, str]:
        async with self.session.get(self.url + path, allow_redirects=False) as resp:
            return resp.status, await resp.text(), resp.headers.get("Location", "")

    async def post(self, path: str, form: dict[str, str]) -> tuple[int, str, str]:
        async with self.session.post(self.url + path, data=form, allow_redirects=False) as resp:
            return resp.status, await resp.text(), resp.headers.get("Location", "")

    async def authorize(self, **params: str) -> tuple[int, str, str]:
        return await self.get("/oidc/authorize?" + urlencode(params))

    async def sign_in(self, page: str, user: str) -> tuple[int, str, str]:
        signin = form_field(page, "signin")
        csrf = form_field(page, "csrf")
        return await self.post("/oidc/signin", {"signin": signin, "csrf": csrf, "user": user})


def form_field(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found, page
    return html.unescape(found.group(1))


def auth_params(client_id: str = "wiki", redirect_uri: str = REDIRECT, **extra: str) -> dict[str, str]:
    return {"client_id": client_id, "redirect_uri": redirect_uri, "response_type": "code", "scope": "openid",
            "state": "st-" + secrets.token_urlsafe(8), "nonce": "n-" + secrets.token_urlsafe(8), **extra}


async def approve_on_phone(phone: Phone, number: str | None, *, deny: str | None = None) -> None:
    for _ in range(200):
        pending = await phone.pending()
        if pending:
            newest = max(pending, key=lambda ch: ch.iat)  # the sign-in under way, not an older prompt
            if deny:
                await phone.deny(newest, deny)
            else:
                await phone.approve(newest, number=number)
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no prompt on the phone")


async def sign_in_and_approve(browser: Browser, authorize_path: str, user: str, phone: Phone) -> str:
    """What a person does: open the authorization URL, give the user name, read the number, approve on the
    phone. The Location the provider sends the browser to (the client, with the code)."""
    status, page, _ = await browser.get(authorize_path)
    assert status == 200, page
    status, _, location = await browser.sign_in(page, user)
    assert status == 303, location
    status, page, _ = await browser.get(location)
    number = re.search(r"<strong>(\d+)</strong>", page)
    refresh = re.search(r'url=([^"]+)"', page)
    assert number, page
    assert refresh, page
    approving = asyncio.create_task(approve_on_phone(phone, number.group(1)))
    status, _, location = await browser.get(html.unescape(refresh.group(1)))
    await approving
    assert status == 303, location
    return location

