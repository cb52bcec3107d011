"""The words every layer shares: fixed vocabularies that metrics labels, log lines and the audit
trail may carry, because no client text ever becomes one of them.

This module sits at the bottom of the house: it imports nothing of HQ's, so any layer may use it.
"""

from __future__ import annotations

#: Protocol fault kinds (``hq_protocol_faults_total{kind}``, the rate-limited warning line).
FAULT_KINDS = frozenset({
    "bad_engineio_packet", "unexpected_engineio_packet", "bad_polling_payload", "too_large",
    "bad_socketio_packet", "unexpected_socketio_packet", "bad_event", "repeated_connect",
    "binary_frame", "slow_consumer", "bad_request",
    # The plain WebSocket: a frame aiohttp refused as RFC 6455 (bad UTF-8, a bad opcode...).
    "bad_websocket_frame",
})

#: What a service key's identity starts with: ``key:NAME`` is the ``from`` of its messages, its
#: audit name and its entry in the revocation feed. A colon never appears in a codename, so a key
#: can never pass for an agent (hq/auth/service_keys.py).
KEY_IDENTITY_PREFIX = "key:"
