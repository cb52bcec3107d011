"""Direct fan-out: the python-socketio internals it relies on, and its behaviour."""

from __future__ import annotations

import asyncio
import inspect

import socketio
from socketio.base_manager import BaseManager

from hq.fanout import LocalManager, RedisManager

from .sio import RecordingClient
from .support import HQServer


def test_the_internals_fanout_relies_on_are_still_there() -> None:
    send = inspect.signature(socketio.AsyncServer._send_eio_packet)
    assert list(send.parameters) == ["self", "eio_sid", "eio_pkt"]
    assert inspect.iscoroutinefunction(socketio.AsyncServer._send_eio_packet)
    assert list(inspect.signature(BaseManager.get_participants).parameters) == ["self", "namespace", "room"]
    emit = inspect.signature(socketio.AsyncManager.emit)
    assert list(emit.parameters)[:8] == ["self", "event", "data", "namespace", "room", "skip_sid", "callback", "to"]
    assert issubclass(LocalManager, socketio.AsyncManager) and issubclass(RedisManager, socketio.AsyncRedisManager)


async def test_broadcast_reaches_every_member_but_the_sender_in_order(shared_hq: HQServer) -> None:
    members = [await RecordingClient().connect(shared_hq.url, shared_hq.login(name)["access_token"])
               for name in ("fox", "hank", "dora", "fox")]
    for member in members:
        assert (await member.call("join", {"channel": "missions"}))["ok"]
    sender = members[1]
    acks = [await sender.call("message", {"channel": "missions", "text": f"n{i}"}) for i in range(20)]
    ids = [ack["id"] for ack in acks]
    for member in (members[0], members[2], members[3]):
        received = await member.wait_for("message", count=20)
        assert [m["id"] for m in received] == ids
    await asyncio.sleep(0.2)
    assert sender.received("message") == []
    for member in members:
        await member.close()
