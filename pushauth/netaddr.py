"""IP addresses as pushauth reads them, and who the client is behind trusted proxies.

One parser for the peer of a connection, the hops of `X-Forwarded-For` and the login IP a login flow
reports, so that one client is one address everywhere: an IPv4 client seen through a dual-stack socket
(`::ffff:192.0.2.7`) is `192.0.2.7` in the rate limits, the detection rules and the evidence alike.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(text: str | None) -> IPAddress | None:
    """The address `text` names (surrounding white space allowed), IPv4-mapped IPv6 as IPv4; None when it
    is not an IP address (empty, a host name, an obfuscated identifier such as RFC 7239's `unknown`)."""
    if not text:
        return None
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def network_of(addr: IPAddress, *, v4: int, v6: int) -> str:
    """The network of `addr` with a prefix of `v4` or `v6` bits, as text (`192.0.2.0/24`)."""
    return str(ipaddress.ip_network(f"{addr}/{v4 if addr.version == 4 else v6}", strict=False))


class TrustedProxies:
    """Which peers may say who the client is, and who it is.

    Behind a load balancer every connection comes from the balancer, which appends the address it saw to
    `X-Forwarded-For`. The client is the right-most address in that header that is not itself a trusted
    proxy: everything to its left was written by the client and proves nothing. From a peer that is not
    trusted the header is ignored, so a client cannot choose its own address, nor rotate through
    addresses to get past the rate limits. Nothing trusted (the default): the peer is the client.
    """

    __slots__ = ("_nets",)

    def __init__(self, networks: Iterable[str]) -> None:
        self._nets: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in networks)

    def _trusted(self, addr: IPAddress) -> bool:
        return any(addr in net for net in self._nets)

    def client(self, peer: str | None, forwarded_for: Iterable[str]) -> str | None:
        """The client's address, given the connection's peer and every `X-Forwarded-For` header value in
        the order received; the peer as given when it is not an IP address (a Unix socket)."""
        addr = parse_ip(peer)
        if addr is None:
            return peer
        if self._nets:
            hops = [hop for value in forwarded_for for hop in value.split(",")]
            for hop in reversed(hops):
                if not self._trusted(addr):
                    break
                # A hop that is not an address (`unknown`, garbage) was written by the client through a
                # proxy that forwards the header without appending, or by a misconfigured proxy: either
                # way the last address read, a proxy's, stands. Its clients then share one rate-limit
                # bucket, which errs toward limiting, never toward a spoofed address.
                hop_addr = _forwarded_hop(hop)
                if hop_addr is None:
                    break
                addr = hop_addr
        return str(addr)


def _forwarded_hop(text: str) -> IPAddress | None:
    # Some balancers write the port too: "192.0.2.7:51234", "[2001:db8::7]:443".
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    return parse_ip(text)
