"""The phone (device) API. Every call but registration is authenticated by `Authorization: PushAuth`."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pushauth import clock, ids
from pushauth.clock import rfc3339
from pushauth.codes.totp import Params
from pushauth.crypto.device_auth import token_from_header
from pushauth.devices.service import AuthedDevice
from pushauth.errors import ServiceUnavailable, Unprocessable
from pushauth.web import io
from pushauth.web.schemas import DeviceAnswer, Pause, RegisterDevice, UpdatePushToken
from pushauth.web.state import CHALLENGES, CODES, DEVICES, KEYRING

routes = web.RouteTableDef()


async def _authenticate(request: web.Request, body: bytes = b"") -> AuthedDevice:
    return await request.app[DEVICES].authenticate(
        request.headers.get("Authorization"), method=request.method, path_qs=request.raw_path, body=body)


@routes.post("/v1/devices")
async def register_device(request: web.Request) -> web.Response:
    raw = await io.read_body(request)
    devices = request.app[DEVICES]
    # The code is spent before anything else about the request is checked (see consume_enrollment).
    code = io.peek_str(raw, "code")
    enrollment = await devices.consume_enrollment(code) if code else None
    token = token_from_header(request.headers.get("Authorization"))
    body = io.decode(raw, RegisterDevice)
    if body.push.provider != "none" and not body.push.token:
        raise Unprocessable("push.token is required for fcm and apns", code="invalid")
    registered = await devices.register(
        enrollment, token=token, method=request.method, path_qs=request.raw_path, body=raw,
        name=body.name, platform=body.platform, push_provider=body.push.provider,
        push_token=body.push.token, remote_ip=io.client_ip(request))
    out: dict[str, Any] = {"device_id": registered.device_id, "user": registered.user,
                           "server_keys": request.app[KEYRING].ring.jwks(), "status": registered.status}
    if registered.number is not None and registered.approval_expires_at is not None:
        # The user types this number on one of their phones to approve this one (number matching).
        out["approval"] = {"number": registered.number,
                           "expires_at": rfc3339(registered.approval_expires_at)}
    # Offline codes (PROTOCOL.md 17.5): an active phone gets its seed now; one still waiting for approval
    # gets it from its activation once approved (it must not sign in with codes before that).
    # A server without its key-encryption key (a deployment problem: logged, and warned about by `pushauth
    # check`) stores no seed; the phone is registered all the same and told, rather than answered 503 after
    # its enrollment code was spent and its device id made (it would never learn that id).
    uid = ids.device_uid(registered.device_id)
    if body.offline_codes and uid is not None:
        pending = registered.status != "active"
        try:
            given = await request.app[CODES].phone_seed(
                uid, registered.user, registered.device_id,
                approval_expires_at=(registered.approval_expires_at or clock.now()) if pending else None)
        except ServiceUnavailable:
            out["otp_unavailable"] = True
        else:
            if given is not None:
                out["otp"] = _otp(*given)
    return io.json(out, status=201)


def _otp(secret: str, params: Params) -> dict[str, Any]:
    return {"secret": secret, "algorithm": params.algorithm, "digits": params.digits, "period": params.period}


@routes.get("/v1/device/activation")
async def activation(request: web.Request) -> web.Response:
    dev = await _authenticate(request)
    out = await request.app[DEVICES].activation(dev)
    if out.get("status") == "active":  # a seed asked for while this phone waited: handed over once
        given = await request.app[CODES].deliver_phone_seed(dev.uid, dev.device_id)
        if given is not None:
            out["otp"] = _otp(*given)
    return io.json(out)


@routes.get("/v1/device/challenges")
async def list_challenges(request: web.Request) -> web.Response:
    dev = await _authenticate(request)
    return io.json({"challenges": await request.app[CHALLENGES].device_pending(dev)})


@routes.get("/v1/device/challenges/{id}")
async def get_challenge(request: web.Request) -> web.Response:
    dev = await _authenticate(request)
    return io.json({"challenge": await request.app[CHALLENGES].device_get(dev, request.match_info["id"])})


@routes.post("/v1/device/challenges/{id}/response")
async def respond(request: web.Request) -> web.Response:
    raw = await io.read_body(request)
    dev = await _authenticate(request, raw)
    body = io.decode(raw, DeviceAnswer)
    answered = await request.app[CHALLENGES].respond(
        dev, request.match_info["id"], nonce=body.nonce, decision=body.decision, reason=body.reason,
        number=body.number, remote_ip=io.client_ip(request))
    out = {"status": answered.status}
    if answered.user_message is not None:  # after "not me": what the user should do now
        out["user_message"] = answered.user_message
    return io.json(out)


@routes.put("/v1/device/push-token")
async def update_push_token(request: web.Request) -> web.Response:
    raw = await io.read_body(request)
    dev = await _authenticate(request, raw)
    body = io.decode(raw, UpdatePushToken)
    if body.provider != "none" and not body.token:
        raise Unprocessable("token is required for fcm and apns", code="invalid")
    await request.app[DEVICES].update_push_token(dev, body.provider, body.token or "")
    return io.json({"status": "updated"})


@routes.delete("/v1/device")
async def unenroll(request: web.Request) -> web.Response:
    dev = await _authenticate(request)
    await request.app[DEVICES].unenroll(dev)
    return io.json({"status": "revoked"})


@routes.post("/v1/device/pause")
async def pause(request: web.Request) -> web.Response:
    raw = await io.read_body(request)
    dev = await _authenticate(request, raw)
    body = io.decode(raw, Pause)
    until = await request.app[DEVICES].pause(dev, body.duration_s)
    return io.json({"status": "paused", "paused_until": rfc3339(until)})


@routes.delete("/v1/device/pause")
async def resume(request: web.Request) -> web.Response:
    dev = await _authenticate(request)
    await request.app[DEVICES].resume(dev)
    return io.json({"status": "resumed"})


@routes.get("/v1/device/devices")
async def own_devices(request: web.Request) -> web.Response:
    dev = await _authenticate(request)
    return io.json({"devices": await request.app[DEVICES].own_devices(dev)})


@routes.delete("/v1/device/devices/{device_id}")
async def revoke_other(request: web.Request) -> web.Response:
    dev = await _authenticate(request)
    await request.app[DEVICES].revoke_other(dev, request.match_info["device_id"])
    return io.json({"device_id": request.match_info["device_id"], "status": "revoked"})


@routes.get("/v1/device/notices")
async def notices(request: web.Request) -> web.Response:
    dev = await _authenticate(request)
    return io.json({"notices": await request.app[DEVICES].notices(dev)})
