"""The AsyncAPI 3.0 description of HQ's real-time endpoints, at ``GET /api/asyncapi.json``.

Generated from hq/realtime/schemas.py (the only description of the payloads, answers and pushed
events) for one app's settings: the server's address and scheme, the channel names ``/ws/{channel}``
may take, the configured ``history`` limit. Two kinds of channel are described:

- Socket.IO (``/socket.io/``, namespace ``/``): each event is a message named after it; each
  client event is a ``send`` operation whose reply is its acknowledgement (its ok answer or the
  error answer); each pushed event a ``receive`` operation. AsyncAPI has no Socket.IO binding, so
  the Engine.IO framing is left to the Socket.IO client, as the channel's description says.
- The plain WebSocket (``/ws``, ``/ws/{channel}``, ``/missions``; contract §8): JSON text frames
  ``{"type": EVENT, "ref"?, ...payload}``, acks ``{"type": "ack", "ref", ...answer}``, the ``ws``
  binding's ``token`` query, and the close codes in the channel's ``x-close-codes`` extension.

tests/test_asyncapi.py runs the AsyncAPI project's own parser (``@asyncapi/parser``) on the served
document and fails on any error diagnostic.
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec

from ..config import Settings
from ..realtime import schemas
from ..realtime.schemas import AUTH_EVENT, CLIENT_EVENTS, SERVER_EVENTS, PayloadSchemas
from .documents import ServedDocument

Schema = dict[str, Any]
SCHEMA_REF = "#/components/schemas/{name}"
WS_BINDING_VERSION = "0.1.0"

#: Contract §8: how HQ closes a plain WebSocket (code, reason, when); 1013 is HQ's own addition (RFC 6455's
#: registered "Try Again Later"). tests/test_plain_websocket.py checks every close the endpoint sends is here.
CLOSE_CODES: tuple[tuple[int, str, str], ...] = (
    (4001, "Unauthorized: Token Missing", "no token at the upgrade and no `auth` frame within 5 seconds"),
    (4001, "Unauthorized: Invalid Token", "bad signature, algorithm, `typ`, claims, issuer or audience; "
                                          "unknown agent"),
    (4001, "Unauthorized: Token Expired", "an expired token; or, after a `session_ended` frame, a live "
                                          "socket whose token expired"),
    (4001, "Unauthorized: Token Revoked", "a revoked session or key; or, after a `session_ended` frame, a "
                                          "live socket whose session was logged out or revoked"),
    (4003, "Forbidden: Agent Disabled", "a disabled agent (a live socket gets a `session_ended` frame first)"),
    (4003, "Forbidden: Origin Not Allowed", "a browser origin outside `[server] allowed_origins` (the upgrade "
                                            "may instead be answered with HTTP 403)"),
    (4003, "Forbidden: Clearance", "`/ws/{channel}` below the channel's read clearance"),
    (4004, "Not Found: Channel", "`/ws/{channel}` naming no channel"),
    (4008, "Policy Violation: Rate Limited", "too many events (the per-socket rate limit, repeatedly)"),
    (1009, "Message Too Big", "a frame over `[server] max_packet_bytes`"),
    (1001, "Going Away", "HQ stopping"),
    (1013, "Try Again Later", "the database did not answer while the socket was being admitted (the token may "
                              "be fine: retry later)"),
)

_ERROR_CODES = ("`bad_request` (a missing or wrongly typed payload), `forbidden`, `not_found`, `rate_limited`, "
                "`payload_too_large`, `unavailable` (a backend is down; retry later), `internal`, and for "
                "`reauth` and `auth` the token codes")


def _ref(path: str) -> Schema:
    return {"$ref": path}


def _framed(component: Schema, frame_type: Schema) -> Schema:
    """A plain WebSocket frame: the component's object with ``type`` and ``ref`` beside its fields."""
    framed = copy.deepcopy(component)
    framed["properties"] = {"type": frame_type,
                            "ref": {"description": "Any JSON value; HQ's ack carries it back (null when absent)."},
                            **framed.get("properties", {})}
    framed["required"] = ["type", *framed.get("required", [])]
    return framed


def _first_line(documented: type) -> str:
    """The first line of a schema class's docstring (its summary)."""
    return (documented.__doc__ or documented.__name__).strip().splitlines()[0]


class _Builder:
    """Builds the document for one app's settings; one method per part."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        payloads = PayloadSchemas(settings.limits.history_max).payload_types
        self._payload_types = payloads
        answers = {name: answer for name, (_, answer) in CLIENT_EVENTS.items()}
        types: list[Any] = [*payloads.values(), *answers.values(), schemas.ErrorAnswer, *SERVER_EVENTS.values()]
        (payload_refs, answer_refs, error_ref, event_refs), self.components = self._schemas(
            types, len(payloads), len(answers))
        self.payload_refs = dict(zip(payloads, payload_refs))
        self.answer_refs = dict(zip(answers, answer_refs))
        self.error_ref = error_ref
        self.event_refs = dict(zip(SERVER_EVENTS, event_refs))
        self.messages: dict[str, Any] = {}

    @staticmethod
    def _schemas(types: list[Any], payloads: int, answers: int) -> tuple[tuple[Any, ...], dict[str, Schema]]:
        refs, components = msgspec.json.schema_components(types, ref_template=SCHEMA_REF)
        refs = list(refs)
        split = (refs[:payloads], refs[payloads:payloads + answers], refs[payloads + answers],
                 refs[payloads + answers + 1:])
        return split, components

    def _component(self, ref: Schema) -> Schema:
        return self.components[ref["$ref"].rsplit("/", 1)[1]]

    def _message(self, message_id: str, name: str, title: str, payload: Schema, summary: str) -> Schema:
        self.messages[message_id] = {"name": name, "title": title, "summary": summary,
                                     "contentType": "application/json", "payload": payload}
        return _ref(f"#/components/messages/{message_id}")

    # Socket.IO ----------------------------------------------------------------------------------
    def socketio(self) -> tuple[Schema, dict[str, Schema]]:
        """The Socket.IO channel and its operations."""
        channel_messages: dict[str, Schema] = {}
        operations: dict[str, Schema] = {}
        error = self._message("socketio.error", "ack", "Error answer", self.error_ref,
                              f"Any event's acknowledgement when it is refused: {_ERROR_CODES}.")
        channel_messages["error"] = error
        for event, (_, answer_type) in CLIENT_EVENTS.items():
            summary = _first_line(answer_type)
            request = self._message(f"socketio.{event}", event, f"{event} (client → HQ)",
                                    self.payload_refs[event], self._doc(self._payload_types[event], event))
            answer = self._message(f"socketio.{event}.answer", "ack", f"{event}: ok answer",
                                   self.answer_refs[event], summary)
            channel_messages[event] = request
            channel_messages[f"{event}_answer"] = answer
            operations[f"socketio_{event}"] = {
                "action": "send", "channel": _ref("#/channels/socketio"),
                "summary": f"Emit `{event}` with an acknowledgement callback.",
                "messages": [_ref(f"#/channels/socketio/messages/{event}")],
                "reply": {"channel": _ref("#/channels/socketio"),
                          "messages": [_ref(f"#/channels/socketio/messages/{event}_answer"),
                                       _ref("#/channels/socketio/messages/error")]}}
        for event, event_type in SERVER_EVENTS.items():
            pushed = self._message(f"socketio.{event}.pushed", event, f"{event} (HQ → client)",
                                   self.event_refs[event], self._doc(event_type, event))
            channel_messages[f"{event}_pushed"] = pushed
            operations[f"socketio_receive_{event}"] = {
                "action": "receive", "channel": _ref("#/channels/socketio"),
                "summary": f"HQ emits `{event}`.",
                "messages": [_ref(f"#/channels/socketio/messages/{event}_pushed")]}
        channel = {
            "address": "/socket.io/", "title": "Socket.IO", "servers": [_ref("#/servers/hq")],
            "description": (
                "Socket.IO (namespace `/`, path `/socket.io/`, websocket and polling transports): use a Socket.IO "
                "client; each message here is a Socket.IO event of the message's `name`, and each client event "
                "takes an acknowledgement callback whose argument is the reply. The token is read from the "
                "first present of `auth.token`, `Authorization: Bearer`, the `jwt` cookie, the `token` query "
                "parameter. A refused connection gets `connect_error` with message `Unauthorized: <reason>` "
                "and data `{\"code\"}`: `token_missing`, `token_invalid`, `token_expired`, `token_revoked`, "
                "`agent_disabled`, `origin_not_allowed`. Any other event name answers `not_found`. A packet "
                "over `[server] max_packet_bytes` closes that socket."),
            "messages": channel_messages}
        return channel, operations

    # plain WebSocket ----------------------------------------------------------------------------
    def plain_messages(self) -> dict[str, Schema]:
        """The plain WebSocket's frames (shared by its three addresses)."""
        frames: dict[str, Schema] = {}
        ack_type = {"const": "ack"}
        error_ack = _framed(self._component(self.error_ref), ack_type)
        for event in [*CLIENT_EVENTS, AUTH_EVENT]:
            payload = self.payload_refs[event]
            if event == "message":  # a frame is an object: the bare-string form is Socket.IO's only
                payload = _ref(SCHEMA_REF.format(name="MessagePayload"))
            component = self._component(payload)
            frame = component if event == AUTH_EVENT else _framed(component, {"const": event})
            answer_ref = self.answer_refs["reauth" if event == AUTH_EVENT else event]
            frames[event] = self._message(
                f"ws.{event}", event, f"{event} frame (client → HQ)", frame,
                self._doc(self._payload_types[event], event))
            frames[f"{event}_ack"] = self._message(
                f"ws.{event}.ack", "ack", f"{event}: ack frame",
                {"oneOf": [_framed(self._component(answer_ref), ack_type), error_ack]},
                f"`{{\"type\":\"ack\",\"ref\"}}` with the `{event}` answer, ok or refused: {_ERROR_CODES}. Before "
                f"the socket is authenticated, any frame but `auth` is acked `token_missing`.")
        for event in SERVER_EVENTS:
            frames[f"{event}_pushed"] = self._message(
                f"ws.{event}.pushed", event, f"{event} frame (HQ → client)",
                _framed(self._component(self.event_refs[event]), {"const": event}),
                self._doc(SERVER_EVENTS[event], event))
        return frames

    def plain_channel(self, key: str, address: str, frames: dict[str, Schema], joins: str) -> tuple[Schema, dict]:
        """One plain WebSocket address as a channel, with its send and receive operations."""
        ws_binding = {"method": "GET", "bindingVersion": WS_BINDING_VERSION, "query": {
            "type": "object", "properties": {"token": {
                "type": "string", "description": "An access token or service key (never logged by HQ; proxies "
                                                 "may log it: prefer the header or cookie)."}}},
            "headers": {"type": "object", "properties": {"Authorization": {
                "type": "string", "description": "`Bearer <access token or service key>`."}}}}
        channel: Schema = {
            "address": address, "title": f"Plain WebSocket {address}", "servers": [_ref("#/servers/hq")],
            "description": (
                f"RFC 6455 WebSocket with JSON text frames. {joins} The token is read from the first present "
                "of the `token` query parameter, `Authorization: Bearer`, the `jwt` cookie; with none, the "
                "first frame must be `auth` within 5 seconds. Every client frame is acked "
                "`{\"type\":\"ack\",\"ref\"}` with exactly the Socket.IO answer; a frame that is not a JSON "
                "object, has an unknown `type` or a bad payload is acked `bad_request` or `not_found`, binary "
                "frames `bad_request`, and none of these closes the socket. HQ pings and closes sockets that "
                "stop answering. Close codes: " + "; ".join(f"{code} `{reason}` ({when})"
                                                            for code, reason, when in CLOSE_CODES) + "."),
            "messages": {name: _ref(f"#/components/messages/{ref['$ref'].rsplit('/', 1)[1]}")
                         for name, ref in frames.items()},
            "bindings": {"ws": ws_binding},
            "x-close-codes": [{"code": code, "reason": reason, "when": when} for code, reason, when in CLOSE_CODES],
        }
        if "{channel}" in address:
            channel["parameters"] = {"channel": {"description": "A configured channel's name.",
                                                 "enum": list(self._settings.channels)}}
        operations: dict[str, Schema] = {}
        here = f"#/channels/{key}"
        for event in [*CLIENT_EVENTS, AUTH_EVENT]:
            operations[f"{key}_{event}"] = {
                "action": "send", "channel": _ref(here), "summary": f"Send a `{event}` frame.",
                "messages": [_ref(f"{here}/messages/{event}")],
                "reply": {"channel": _ref(here), "messages": [_ref(f"{here}/messages/{event}_ack")]}}
        for event in SERVER_EVENTS:
            operations[f"{key}_receive_{event}"] = {
                "action": "receive", "channel": _ref(here), "summary": f"HQ sends a `{event}` frame.",
                "messages": [_ref(f"{here}/messages/{event}_pushed")]}
        return channel, operations

    @staticmethod
    def _doc(schema_type: Any, event: str) -> str:
        if not isinstance(schema_type, type):  # message's union: an object, or a bare string
            return _first_line(schemas.MessagePayload) + " On Socket.IO, a bare string is the text of a message " \
                                                         "to channel `hq`."
        return _first_line(schema_type)

    def document(self) -> Schema:
        """The whole document."""
        server = self._settings.server
        socketio_channel, operations = self.socketio()
        channels = {"socketio": socketio_channel}
        frames = self.plain_messages()
        for key, address, joins in (
                ("ws", "/ws", "Joins no channel until a `join` frame."),
                ("ws_channel", "/ws/{channel}", "Joins `{channel}` as soon as the socket opens (4003 below its "
                                                 "read clearance, 4004 when no channel has that name)."),
                ("missions", "/missions", "The same as `/ws/missions`.")):
            channels[key], channel_operations = self.plain_channel(key, address, frames, joins)
            operations.update(channel_operations)
        return {
            "asyncapi": "3.0.0",
            "info": {"title": "HQ real-time", "version": "1", "description": (
                "HQ's two real-time endpoints, sharing tokens, clearance, limits, channels, ids and history: a "
                "message sent on either reaches the members of both, on every node. The HTTP API is described "
                "at /api/openapi.json.")},
            "defaultContentType": "application/json",
            "servers": {"hq": {
                "host": f"{server.host}:{server.port}", "protocol": "wss" if server.tls_cert else "ws",
                "description": "This HQ node (behind a proxy, use the proxy's address).",
                "security": [_ref(f"#/components/securitySchemes/{name}") for name in ("bearer", "query", "cookie")]}},
            "channels": channels,
            "operations": operations,
            "components": {
                "schemas": self.components,
                "messages": self.messages,
                "securitySchemes": {
                    "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                               "description": "An access token (POST /api/auth/login) or a service key."},
                    "query": {"type": "httpApiKey", "in": "query", "name": "token",
                              "description": "The token in the `token` query parameter."},
                    "cookie": {"type": "httpApiKey", "in": "cookie", "name": "jwt",
                               "description": "The HttpOnly cookie login sets (the browser console's way)."}},
            },
        }


def build_document(settings: Settings) -> dict[str, Any]:
    """The AsyncAPI 3.0 document for these settings."""
    return _Builder(settings).document()


class AsyncApi(ServedDocument):
    """Serves the AsyncAPI document at ``GET /api/asyncapi.json``."""

    PATH = "/api/asyncapi.json"

    def __init__(self, settings: Settings) -> None:
        super().__init__(self.PATH, build_document(settings))
