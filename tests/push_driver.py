"""Drive one real push provider from a child process (which the tests start inside the sandbox, see
testkit/fakes/sandbox.py) and print what each send came back as.

    python tests/push_driver.py '<push settings as JSON>'  < requests.jsonl  > outcomes.jsonl

Each stdin line: {"provider": "fcm"|"apns", "token": str, "challenge_id": str, "server": str,
"expires_at": int, optionally "delay_s": float (sent that long after the first)}. Each stdout line:
{"kind", "reason", "retry_after_s", "provider_id"}, in the order of the requests. Lines are sent concurrently
when stdin carries several, as the worker would.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import msgspec

from pushauth.config import PushSettings
from pushauth.logs import configure
from pushauth.push import PushMessage
from pushauth.push.registry import close_providers, open_providers


async def main() -> None:
    configure("info", "json")  # logs to stderr: stdout carries only the outcome lines
    settings = msgspec.convert(json.loads(sys.argv[1]), PushSettings)
    requests = [json.loads(line) for line in sys.stdin if line.strip()]
    providers = open_providers(settings)
    try:
        async def one(req: dict[str, Any]) -> dict[str, Any]:
            await asyncio.sleep(float(req.get("delay_s", 0)))
            msg = PushMessage(req["challenge_id"], req["server"], int(req["expires_at"]))
            out = await providers[req["provider"]].send(req["token"], msg)
            return {"kind": out.kind.value, "reason": out.reason, "retry_after_s": out.retry_after_s,
                    "provider_id": out.provider_id}

        for result in await asyncio.gather(*(one(r) for r in requests)):
            print(json.dumps(result), flush=True)
    finally:
        await close_providers(providers)


if __name__ == "__main__":
    asyncio.run(main())
