"""The client's address: the socket's peer, or ``X-Forwarded-For`` from a trusted proxy only."""

from __future__ import annotations

import ipaddress

from aiohttp import web


class AddressResolver:
    """Finds a request's client address, believing forwarded headers only from trusted proxies."""

    def __init__(self, trusted_proxies: tuple[str, ...]) -> None:
        self._trusted = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]

    def client_address(self, request: web.BaseRequest) -> str:
        """The address failed logins are counted against and audit lines name."""
        peer = _peer(request)
        if not self._is_trusted(peer):
            return peer
        forwarded = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
        for hop in reversed(forwarded):
            if not self._is_trusted(hop):
                return hop
        return forwarded[0] if forwarded else peer

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)


def _peer(request: web.BaseRequest) -> str:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, (tuple, list)) and peer:
        return str(peer[0])
    return request.remote or "unknown"
