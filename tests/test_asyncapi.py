"""hq/realtime/schemas.py is the one description of the real-time payloads and answers, and
``GET /api/asyncapi.json`` (generated from it) is a valid AsyncAPI 3.0 document that tells the truth.

* Validation: :meth:`PayloadSchemas.decode` keeps the contract's semantics (bools are not ints, a
  bare string is a message to ``hq``, the configured ``history`` limit) and refuses with
  ``bad_request`` in words that never repeat the client's values.
* The document: the AsyncAPI project's own parser (``@asyncapi/parser`` from npm, run by
  tests/js/validate_asyncapi.mjs) reports no error on the document a real HQ serves, and does report
  one on a broken copy (so the check can fail). It names every event, answer and close code.
* The truth: real answers and pushed events of a real HQ convert into their schemas, whose answer
  and event classes forbid unknown fields.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import msgspec
import pytest
import requests

from hq.errors import EventError
from hq.http.asyncapi import CLOSE_CODES
from hq.realtime import schemas
from hq.realtime.schemas import CLIENT_EVENTS, SERVER_EVENTS, MessagePayload, PayloadSchemas

from .sio import RecordingClient
from .support import HQServer

ROOT = Path(__file__).resolve().parent.parent
VALIDATOR = ROOT / "tests" / "js" / "validate_asyncapi.mjs"
Connect = Callable[..., Awaitable[RecordingClient]]


# validation ---------------------------------------------------------------------------------------
def test_decode_keeps_the_contracts_semantics() -> None:
    payloads = PayloadSchemas(history_max=50)
    assert payloads.decode("message", "hello") == MessagePayload("hq", "hello")
    assert payloads.decode("message", {"channel": "missions", "text": "x", "extra": 1}) == MessagePayload("missions", "x")
    history = payloads.decode("history", {"channel": "missions"})
    assert (history.after_id, history.limit) == (None, schemas.DEFAULT_HISTORY_LIMIT)
    assert payloads.decode("history", {"channel": "missions", "after_id": 0, "limit": 50}).limit == 50
    assert payloads.decode("auth", {"type": "auth", "token": "t", "ref": [1]}).ref == [1]
    assert payloads.decode("reauth", {"token": "t"}).token == "t"


@pytest.mark.parametrize("event, payload", [
    ("history", {"channel": "missions", "after_id": True}), ("history", {"channel": "missions", "limit": False}),
    ("history", {"channel": "missions", "limit": 51}), ("history", {"channel": "missions", "limit": 0}),
    ("history", {"channel": "missions", "after_id": -1}), ("history", {"channel": "missions", "limit": 2.0}),
    ("message", ""), ("message", {"channel": "hq", "text": ""}), ("message", {"text": "x"}), ("message", 5),
    ("join", "missions"), ("join", {"channel": None}), ("leave", []), ("presence", None), ("reauth", {"token": 5}),
    ("auth", {"type": "auth"}), ("auth", {"token": "t"}), ("auth", {"type": "reauth", "token": "t"}),
])
def test_decode_refuses_with_bad_request(event: str, payload: Any) -> None:
    with pytest.raises(EventError) as refused:
        PayloadSchemas(history_max=50).decode(event, payload)
    assert refused.value.code == "bad_request" and refused.value.message.startswith(f"bad {event} payload: ")


def test_refusals_never_repeat_the_clients_values() -> None:
    secret = "s3cr3t-client-text"
    for event, payload in [("join", {"channel": [secret]}), ("message", {"channel": "hq", "text": [secret]}),
                           ("history", {"channel": "hq", "limit": secret}), ("reauth", {"token": {secret: 1}}),
                           ("auth", {"type": secret, "token": "t"}), ("auth", {"type": f"{secret}'", "token": "t"})]:
        with pytest.raises(EventError) as refused:
            PayloadSchemas().decode(event, payload)
        assert secret not in refused.value.message, refused.value.message


# the document -------------------------------------------------------------------------------------
def run_parser(document: dict[str, Any], tmp_path: Path) -> tuple[int, list[dict[str, Any]]]:
    """Run ``@asyncapi/parser`` on ``document``: its exit code and its diagnostics."""
    path = tmp_path / "asyncapi.json"
    path.write_text(json.dumps(document))
    result = subprocess.run(["node", str(VALIDATOR), str(path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def document(shared_hq: HQServer) -> dict[str, Any]:
    served = requests.get(f"{shared_hq.url}/api/asyncapi.json", timeout=10)
    assert served.status_code == 200 and served.headers["Content-Type"].startswith("application/json")
    return served.json()


def test_the_asyncapi_parser_accepts_the_served_document(document: dict[str, Any], tmp_path: Path) -> None:
    returncode, diagnostics = run_parser(document, tmp_path)
    assert returncode == 0 and not [d for d in diagnostics if d["severity"] == "error"], diagnostics
    assert document["asyncapi"] == "3.0.0"


def test_the_asyncapi_parser_catches_a_broken_document(document: dict[str, Any], tmp_path: Path) -> None:
    broken = json.loads(json.dumps(document))
    operation = broken["operations"]["socketio_join"]
    operation["channel"] = {"$ref": "#/channels/nowhere"}  # a dangling reference
    del broken["channels"]["ws"]["address"]  # and a type error: an address is a string or null
    broken["channels"]["ws"]["address"] = 5
    returncode, diagnostics = run_parser(broken, tmp_path)
    assert returncode == 1 and [d for d in diagnostics if d["severity"] == "error"], diagnostics


def test_the_document_describes_every_event_answer_and_close_code(document: dict[str, Any]) -> None:
    channels = document["channels"]
    assert {channel["address"] for channel in channels.values()} == {"/socket.io/", "/ws", "/ws/{channel}",
                                                                     "/missions"}
    names = {message["name"] for message in document["components"]["messages"].values()}
    assert set(CLIENT_EVENTS) | set(SERVER_EVENTS) | {"auth", "ack"} == names
    operations = document["operations"].values()
    for key, channel in channels.items():
        sent = {op["messages"][0]["$ref"].rsplit("/", 1)[1] for op in operations
                if op["channel"]["$ref"] == f"#/channels/{key}" and op["action"] == "send"}
        received = {op["messages"][0]["$ref"].rsplit("/", 1)[1] for op in operations
                    if op["channel"]["$ref"] == f"#/channels/{key}" and op["action"] == "receive"}
        plain = key != "socketio"
        assert sent == set(CLIENT_EVENTS) | ({"auth"} if plain else set()), key
        assert received == {f"{event}_pushed" for event in SERVER_EVENTS}, key
        if plain:
            assert channel["bindings"]["ws"]["query"]["properties"].keys() == {"token"}
            assert [(c["code"], c["reason"]) for c in channel["x-close-codes"]] == [c[:2] for c in CLOSE_CODES]
    codes = {code for code, _, _ in CLOSE_CODES}
    assert codes == {4001, 4003, 4004, 4008, 1009, 1001, 1013}
    error_codes = document["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["enum"]
    assert {"bad_request", "forbidden", "not_found", "rate_limited", "payload_too_large", "unavailable",
            "internal", "token_invalid"} <= set(error_codes)


# the truth ----------------------------------------------------------------------------------------
@pytest.fixture
async def connect(shared_hq: HQServer) -> AsyncIterator[Connect]:
    """``await connect(codename)`` opens a RecordingClient logged in as it; all are closed after the test."""
    made: list[RecordingClient] = []

    async def open_client(codename: str) -> RecordingClient:
        client = RecordingClient()
        made.append(client)
        return await client.connect(shared_hq.url, shared_hq.login(codename)["access_token"])

    yield open_client
    for client in made:
        await client.close()


def conforms(answer: Any, answer_type: type[msgspec.Struct]) -> msgspec.Struct:
    """``answer`` converted into its schema (raises when it has a field too many or too few)."""
    return msgspec.convert(answer, answer_type)


async def test_real_answers_and_events_match_their_schemas(shared_hq: HQServer, connect: Connect) -> None:
    hank, fox = await connect("hank"), await connect("fox")
    assert conforms(await fox.call("join", {"channel": "missions"}), schemas.JoinAnswer).ok is True
    assert conforms(await hank.call("join", {"channel": "missions"}), schemas.JoinAnswer).ok is True
    sent = conforms(await hank.call("message", {"channel": "missions", "text": "schema check"}),
                    schemas.MessageAnswer)
    pushed = conforms((await fox.wait_for("message"))[-1], schemas.ChatMessage)
    assert (pushed.id, pushed.sender) == (sent.id, "hank")
    history = conforms(await hank.call("history", {"channel": "missions", "after_id": sent.id - 1}),
                       schemas.HistoryAnswer)
    assert [m.id for m in history.messages] == [sent.id] and history.truncated is False
    assert conforms(await hank.call("presence", {"channel": "missions"}), schemas.PresenceAnswer).agents
    assert conforms((await fox.wait_for("presence"))[-1], schemas.PresenceChange).online is True
    token = shared_hq.login("hank")["access_token"]
    assert conforms(await hank.call("reauth", {"token": token}), schemas.ReauthAnswer).ok is True
    assert conforms(await hank.call("leave", {"channel": "missions"}), schemas.OkAnswer).ok is True
    refused = conforms(await hank.call("history", {"channel": "missions", "limit": True}), schemas.ErrorAnswer)
    assert (refused.ok, refused.error.code) == (False, "bad_request")
    logout = requests.post(f"{shared_hq.url}/api/auth/logout", headers={"Authorization": f"Bearer {token}"},
                           timeout=10)
    assert logout.status_code == 204
    assert conforms((await hank.wait_for("session_ended"))[-1], schemas.SessionEnded).reason == "logged_out"
