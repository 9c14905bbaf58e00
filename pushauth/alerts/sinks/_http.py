"""What the HTTP sinks (webhook, Slack, Teams) share: one POST, its answer mapped to an outcome.

One aiohttp session per sink, created on the first delivery (inside the running loop) and closed by
`aclose`. Redirects are not followed: a receiver that moved answers 3xx, which is retried and logged, rather
than the alert (and a webhook signature) going to wherever a redirect points. Proxies come from the
environment (HTTPS_PROXY, NO_PROXY), which is how most hospital networks reach Slack and Teams.

Nothing here ever logs a URL's path or an exception's text: the path of a Slack or Teams URL is its
credential, and aiohttp puts the full URL into some exception messages (connection timeouts).
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping

import aiohttp
import structlog

from pushauth import __version__
from pushauth.alerts.settings import url_origin
from pushauth.alerts.sinks.base import DELIVERED, SinkOutcome, SinkOutcomeKind, retry
from pushauth.clock import retry_after_s

log = structlog.get_logger(__name__)

USER_AGENT = f"pushauth/{__version__}"
# Enough of an error answer to tell "no_service" from "invalid_blocks"; the rest is not read.
_DETAIL_BYTES = 200
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")


def tls_context(ca_file: str) -> ssl.SSLContext:
    """Certificate and host name checked, against `ca_file` or the system's CAs. Reads the file now, so a
    bad file fails at start (OSError, ssl.SSLError)."""
    return ssl.create_default_context(cafile=ca_file or None)


class HttpTarget:
    """POSTs to one URL; `origin` (scheme://host[:port]) is all of it that is ever logged."""

    def __init__(self, *, sink: str, kind: str, url: str, timeout_s: float, ca_file: str = "") -> None:
        self._sink, self._kind, self._url = sink, kind, url
        self.origin = url_origin(url)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._ssl = tls_context(ca_file)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"HttpTarget({self.origin}/...)"

    async def post(self, body: bytes, headers: Mapping[str, str]) -> SinkOutcome:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl), timeout=self._timeout,
                headers={"User-Agent": USER_AGENT}, trust_env=True)
        try:
            async with self._session.post(self._url, data=body, headers=headers,
                                          allow_redirects=False) as resp:
                # Read (a little of) the answer: a connection is only reused once its answer is consumed.
                detail = await resp.content.read(_DETAIL_BYTES)
                if 200 <= resp.status < 300:
                    log.debug("alert_sink_delivered", sink=self._sink, kind=self._kind, target=self.origin,
                              status=resp.status)
                    return DELIVERED
                retry_after = retry_after_s(resp.headers.get("Retry-After"))
                status = resp.status
        except TimeoutError as exc:
            return self._failed("timeout", exc)
        except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
            return self._failed("tls", exc)
        except (aiohttp.ClientConnectionError, OSError) as exc:
            return self._failed("connection", exc)
        except aiohttp.ClientError as exc:  # a malformed answer
            return self._failed("bad_response", exc)
        # The receiver's words, for an operator ("no_service", "invalid_blocks"): printable, short.
        log.warning("alert_sink_refused", sink=self._sink, kind=self._kind, target=self.origin, status=status,
                    retry_after_s=retry_after,
                    detail=_UNPRINTABLE.sub(" ", detail.decode("utf-8", "replace")).strip())
        if status == 410:
            return SinkOutcome(SinkOutcomeKind.GONE, "http_410")
        return retry(f"http_{status}", retry_after)

    def _failed(self, reason: str, exc: BaseException) -> SinkOutcome:
        # The exception's type only: its text may hold the full URL.
        cert_error = getattr(exc, "certificate_error", None)
        log.warning("alert_sink_failed", sink=self._sink, kind=self._kind, target=self.origin, reason=reason,
                    error=type(exc).__name__,
                    **({"tls_error": cert_error.verify_message}
                       if isinstance(cert_error, ssl.SSLCertVerificationError) else {}))
        return retry(reason)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
