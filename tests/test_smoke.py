import socketio

from .support import HQServer


async def test_login_connect_and_message(hq: HQServer) -> None:
    hank = hq.login("hank")["access_token"]
    fox = hq.login("fox")["access_token"]
    received = []
    listener = socketio.AsyncClient()
    listener.on("message", lambda data: received.append(data))
    await listener.connect(hq.url, auth={"token": fox}, transports=["websocket"])
    assert (await listener.call("join", {"channel": "missions"}))["ok"]
    sender = socketio.AsyncClient()
    await sender.connect(hq.url, auth={"token": hank})
    ack = await sender.call("message", {"channel": "missions", "text": "hello"})
    assert ack == {"ok": True, "id": 1}
    for _ in range(50):
        if received:
            break
        await __import__("asyncio").sleep(0.05)
    assert received[0]["text"] == "hello" and received[0]["from"] == "hank"
    await listener.disconnect()
    await sender.disconnect()


async def test_unknown_event_is_answered_not_found(hq: HQServer) -> None:
    client = socketio.AsyncClient()
    await client.connect(hq.url, auth={"token": hq.login("fox")["access_token"]})
    ack = await client.call("launch_missiles", {"target": "moon"}, timeout=10)
    assert ack["ok"] is False and ack["error"]["code"] == "not_found"
    assert (await client.call("join", {"channel": "missions"}, timeout=10))["ok"]
    await client.disconnect()
