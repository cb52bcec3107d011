"""One schema per real-time payload and answer (contract §4 and §8): the only description of them.

Client → HQ payloads are validated here for both real-time endpoints (Socket.IO and the plain
WebSocket) through :meth:`PayloadSchemas.decode`; the answers and the events HQ pushes are described
here too, and ``GET /api/asyncapi.json`` (hq/http/asyncapi.py) is generated from these classes.

msgspec was chosen for speed: ``msgspec.convert`` checks a decoded payload against a Struct in C
(bench/validation.py measures it against pydantic and jsonschema, and against the whole message path).
Payloads ignore fields they do not name (a plain WebSocket frame carries ``type`` and ``ref`` beside
its payload; older and newer clients may send more); answers and pushed events forbid unknown
fields, so a test that checks HQ's real answers against them catches any drift.

What stays outside the schemas, checked where it is today: whether a channel exists (the clearance
policy: ``not_found``), the text's size in UTF-8 bytes (``payload_too_large``) and its validity as
Unicode (a lone surrogate: ``bad_request``), and clearance (``forbidden``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

import msgspec

from ..errors import EventError

#: ``history`` answers this many messages when the client asks for no ``limit``.
DEFAULT_HISTORY_LIMIT = 100
#: The contract's ceiling for ``history``'s ``limit``; ``[limits] history_max`` may lower it.
HISTORY_LIMIT_CEILING = 500
#: Longest validation message sent back.
MESSAGE_MAX_CHARS = 200
#: msgspec repeats a refused value only in "Invalid enum value <repr>[ - at `$.path`]"; the value is the
#: client's text, so it never goes back into a message (the path, made of HQ's field names, does).
_ENUM_VALUE = re.compile(r"^Invalid enum value .*?(?P<path> - at `[^`]*`)?$", re.DOTALL)

ChannelName = Annotated[str, msgspec.Meta(description="A channel's name, as configured (`[channels.NAME]`).")]
NonEmptyText = Annotated[str, msgspec.Meta(min_length=1, description=(
    "The message's text: non-empty, at most `[limits] text_max_bytes` (16 KiB) of UTF-8, else "
    "`payload_too_large`."))]
MessageId = Annotated[int, msgspec.Meta(ge=1, description="A message's id: grows by one per channel, never reused.")]
AfterId = Annotated[int, msgspec.Meta(ge=0, description="Only messages with a greater id (not a boolean).")]
Token = Annotated[str, msgspec.Meta(description="An access token (JWT) or a service key (`hqk_...`).")]
Expiry = Annotated[int, msgspec.Meta(description="The token's `exp`: seconds since the Unix epoch.")]
Timestamp = Annotated[str, msgspec.Meta(description="ISO 8601 UTC with milliseconds, e.g. 2024-05-01T12:00:00.000Z.")]

#: msgspec's Literal takes no booleans: ``ok`` is a boolean whose JSON Schema says which one it is.
OkTrue = Annotated[bool, msgspec.Meta(extra_json_schema={"const": True}, description="Always true.")]
OkFalse = Annotated[bool, msgspec.Meta(extra_json_schema={"const": False}, description="Always false.")]

#: Every code an error answer may carry (contract §4; the token codes answer ``reauth`` and ``auth``).
ErrorCode = Literal["bad_request", "forbidden", "not_found", "rate_limited", "payload_too_large",
                    "unavailable", "internal", "token_missing", "token_invalid", "token_expired",
                    "token_revoked", "agent_disabled"]
#: Why HQ ends a live socket's session (``session_ended``).
EndReason = Literal["token_expired", "logged_out", "revoked", "agent_disabled"]


# client → HQ ------------------------------------------------------------------------------------
class JoinPayload(msgspec.Struct, frozen=True):
    """``join``: become a member of a channel (read clearance needed)."""

    channel: ChannelName


class LeavePayload(msgspec.Struct, frozen=True):
    """``leave``: stop being a member of a channel."""

    channel: ChannelName


class MessagePayload(msgspec.Struct, frozen=True):
    """``message``: store a message and send it to the channel's members (write clearance needed)."""

    channel: ChannelName
    text: NonEmptyText


#: ``message`` also takes a bare string: the text of a message to channel ``hq``.
BareMessage = Annotated[str, msgspec.Meta(min_length=1, description=(
    "A bare string: the text of a message to channel `hq`."))]
BARE_MESSAGE_CHANNEL = "hq"


class HistoryPayload(msgspec.Struct, frozen=True):
    """``history``: stored messages of a channel after ``after_id``, oldest first (read clearance needed)."""

    channel: ChannelName
    after_id: AfterId | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=HISTORY_LIMIT_CEILING)] = DEFAULT_HISTORY_LIMIT


class ReauthPayload(msgspec.Struct, frozen=True):
    """``reauth``: a fresh access token for the same codename, extending the live connection."""

    token: Token


class PresencePayload(msgspec.Struct, frozen=True):
    """``presence``: who is online in a channel, on any node (read clearance needed)."""

    channel: ChannelName


class AuthFrame(msgspec.Struct, frozen=True):
    """Plain WebSocket only: the first frame when the upgrade carried no token; acked like ``reauth``."""

    type: Literal["auth"]
    token: Token
    ref: Any = None


#: What each client event's payload must be. ``auth`` is the plain WebSocket's first-frame auth.
Payload = Union[JoinPayload, LeavePayload, MessagePayload, HistoryPayload, ReauthPayload, PresencePayload,
                AuthFrame]


# answers ---------------------------------------------------------------------------------------
class OkAnswer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``leave``'s answer."""

    ok: OkTrue


class JoinAnswer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``join``'s answer: the channel's newest id now (0 when it has none); later ones arrive live."""

    ok: OkTrue
    channel: ChannelName
    last_id: Annotated[int, msgspec.Meta(ge=0)]


class MessageAnswer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``message``'s answer, sent only after the message is durably stored."""

    ok: OkTrue
    id: MessageId


class ChatMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A stored message: pushed as ``message`` to a channel's members, and in ``history`` answers."""

    id: MessageId
    channel: ChannelName
    sender: str = msgspec.field(name="from")  # the sender's codename, or ``key:NAME`` for a service key
    text: str
    ts: Timestamp


class HistoryAnswer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``history``'s answer; ``truncated`` is true when messages after ``after_id`` are no longer kept."""

    ok: OkTrue
    messages: list[ChatMessage]
    truncated: bool


class ReauthAnswer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``reauth``'s (and the plain WebSocket ``auth`` frame's) answer."""

    ok: OkTrue
    exp: Expiry


class OnlineAgent(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One agent online in a channel, with its number of sockets in it across the cluster."""

    codename: str
    role: str
    connections: Annotated[int, msgspec.Meta(ge=1)]


class PresenceAnswer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``presence``'s answer."""

    ok: OkTrue
    agents: list[OnlineAgent]


class ErrorDetail(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Why an event was refused: a code to switch on, and words for people."""

    code: ErrorCode
    message: str


class ErrorAnswer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Any event's answer when it is refused; nothing about the socket changes."""

    ok: OkFalse
    error: ErrorDetail


# HQ → client -----------------------------------------------------------------------------------
class TokenExpiring(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``token_expiring``: sent `[auth] expiry_warning` seconds (60) before the connection's token expires."""

    exp: Expiry


class SessionEnded(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``session_ended``: HQ then disconnects the socket."""

    reason: EndReason


class PresenceChange(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``presence``: an agent's first socket arrived in the channel, or its last one left (any node)."""

    channel: ChannelName
    codename: str
    online: bool


#: Each client event: its payload's type and its ok answer's type (every event may answer ErrorAnswer).
CLIENT_EVENTS: dict[str, tuple[Any, type[msgspec.Struct]]] = {
    "join": (JoinPayload, JoinAnswer),
    "leave": (LeavePayload, OkAnswer),
    "message": (Union[MessagePayload, BareMessage], MessageAnswer),
    "history": (HistoryPayload, HistoryAnswer),
    "reauth": (ReauthPayload, ReauthAnswer),
    "presence": (PresencePayload, PresenceAnswer),
}
#: The plain WebSocket's first-frame auth, beside the §4 events.
AUTH_EVENT = "auth"
#: Each event HQ pushes to clients and its payload's type.
SERVER_EVENTS: dict[str, type[msgspec.Struct]] = {
    "message": ChatMessage,
    "token_expiring": TokenExpiring,
    "session_ended": SessionEnded,
    "presence": PresenceChange,
}


class PayloadSchemas:
    """Validates client payloads for both real-time endpoints; built once from the settings' limits.

    ``history_max`` (``[limits] history_max``) narrows ``history``'s ``limit``: a subclass of
    :class:`HistoryPayload` carries the configured maximum, so the AsyncAPI document shows it too.
    """

    def __init__(self, history_max: int = HISTORY_LIMIT_CEILING) -> None:
        history = HistoryPayload
        if history_max != HISTORY_LIMIT_CEILING:
            history = msgspec.defstruct("HistoryPayload", [
                ("limit", Annotated[int, msgspec.Meta(ge=1, le=history_max)], DEFAULT_HISTORY_LIMIT)],
                bases=(HistoryPayload,), module=__name__, frozen=True)
            history.__doc__ = HistoryPayload.__doc__
        self.history_max = history_max
        #: The type each event's payload is converted to (``auth`` included).
        self.payload_types: dict[str, Any] = {name: payload for name, (payload, _) in CLIENT_EVENTS.items()}
        self.payload_types["history"] = history
        self.payload_types[AUTH_EVENT] = AuthFrame
        # msgspec caches what it knows of a Struct class, not of a Union: converting to the Union
        # costs twenty times more (bench/validation.py), so the bare string becomes the object first.
        self._struct_types: dict[str, type[msgspec.Struct]] = {
            name: MessagePayload if name == "message" else payload for name, payload in self.payload_types.items()}

    def decode(self, event: str, payload: Any) -> Any:
        """``payload`` (as decoded from JSON) checked against ``event``'s schema, as its Struct.

        ``message``'s bare string comes back as a :class:`MessagePayload` to channel ``hq``.
        Raises :class:`~hq.errors.EventError` ``bad_request`` saying what is wrong and where
        (msgspec's words, which name types and paths; never the client's values).
        """
        if event == "message" and isinstance(payload, str):
            payload = {"channel": BARE_MESSAGE_CHANNEL, "text": payload}
        try:
            return msgspec.convert(payload, self._struct_types[event])
        except msgspec.ValidationError as exc:
            reason = _ENUM_VALUE.sub(r"Invalid value\g<path>", str(exc))[:MESSAGE_MAX_CHARS]
            raise EventError(f"bad {event} payload: {reason}", "bad_request") from None
