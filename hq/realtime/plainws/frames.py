"""The plain WebSocket's wire (contract §8): JSON text frames in and out, and the close-code table.

Client → HQ: ``{"type": EVENT, "ref"?: any JSON value, ...payload}``; HQ answers each with
``{"type": "ack", "ref": <the same ref, or null>, ...answer}``, the answer being exactly the
Socket.IO ack. HQ → client: ``{"type": EVENT, ...payload}``. A frame that cannot be read as an
event is answered, never a reason to close: :func:`read_frame` says what was wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..engine import websocket_text_frame
from ..peers import Ack
from ..wire import SocketJSON


@dataclass(frozen=True)
class Close:
    """A close code and its reason, as a browser's ``CloseEvent`` shows them."""

    code: int
    reason: str


#: A token refused at the upgrade or in the ``auth`` frame, by the contract's token code.
TOKEN_REFUSED = {
    "token_missing": Close(4001, "Unauthorized: Token Missing"),
    "token_invalid": Close(4001, "Unauthorized: Invalid Token"),
    "token_expired": Close(4001, "Unauthorized: Token Expired"),
    "token_revoked": Close(4001, "Unauthorized: Token Revoked"),
    "agent_disabled": Close(4003, "Forbidden: Agent Disabled"),
}
#: Any other refusal of a token (a second-factor enrolment token, say) is an invalid one here.
INVALID_TOKEN = TOKEN_REFUSED["token_invalid"]
#: A live socket whose session ended, by the ``session_ended`` reason sent just before.
SESSION_ENDED = {
    "token_expired": Close(4001, "Unauthorized: Token Expired"),
    "logged_out": Close(4001, "Unauthorized: Token Revoked"),
    "revoked": Close(4001, "Unauthorized: Token Revoked"),
    "agent_disabled": Close(4003, "Forbidden: Agent Disabled"),
}
ORIGIN_NOT_ALLOWED = Close(4003, "Forbidden: Origin Not Allowed")
CLEARANCE = Close(4003, "Forbidden: Clearance")
NO_CHANNEL = Close(4004, "Not Found: Channel")
RATE_LIMITED = Close(4008, "Policy Violation: Rate Limited")
MESSAGE_TOO_BIG = Close(1009, "Message Too Big")
GOING_AWAY = Close(1001, "Going Away")
#: Not in the contract's table: the store was down while the socket was being admitted (RFC 6455's
#: registered "Try Again Later"); the token may be fine, so it is no 4001.
TRY_AGAIN_LATER = Close(1013, "Try Again Later")


@dataclass(frozen=True)
class Frame:
    """A client frame read as an event: its ``type``, its ``ref`` and the whole object as the payload
    (the schemas ignore ``type`` and ``ref``)."""

    event: str
    ref: Any
    payload: dict[str, Any]


class BadFrame(Exception):
    """A frame that is no event: not JSON, not an object, or without a string ``type``."""

    def __init__(self, message: str, ref: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.ref = ref


def read_frame(text: str) -> Frame:
    """A text frame as an event; raises :class:`BadFrame` (with the ``ref``, if one could be read)."""
    try:
        value = SocketJSON.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the decoders go
        raise BadFrame("a frame must be a JSON object") from None
    if not isinstance(value, dict):
        raise BadFrame("a frame must be a JSON object, not a JSON " + type(value).__name__)
    ref = value.get("ref")
    event = value.get("type")
    if not isinstance(event, str):
        raise BadFrame('a frame needs a string "type" (the event)', ref)
    return Frame(event, ref, value)


def event_text(event: str, payload: dict[str, Any]) -> str:
    """An HQ → client event as a frame's text: ``{"type": event, ...payload}``."""
    return SocketJSON.dumps({"type": event, **payload})


def event_frame(event: str, payload: dict[str, Any]) -> bytes:
    """The same as one whole WebSocket text frame, for a broadcast written once to every member."""
    return websocket_text_frame(event_text(event, payload))


def ack_text(ref: Any, answer: Ack) -> str:
    """An ack's text: ``{"type": "ack", "ref": ref, ...answer}``."""
    return SocketJSON.dumps({"type": "ack", "ref": ref, **answer})
