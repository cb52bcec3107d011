"""A graceful stop (SIGTERM) does not wait for connected clients to time out."""

from __future__ import annotations

import asyncio
import signal

import pytest

from .sio import RecordingClient
from .support import ROOT, HQProcess


@pytest.mark.real_process  # about the serve process itself
async def test_sigterm_with_websocket_and_js_clients_connected_exits_promptly(hq: HQProcess) -> None:
    client = await RecordingClient().connect(hq.url, hq.login("fox")["access_token"], transports=["websocket"])
    js = await asyncio.create_subprocess_exec(
        "node", "-e", f"""
        const {{ io }} = require('socket.io-client');
        const s = io('{hq.url}', {{ auth: {{ token: '{hq.login("hank")["access_token"]}' }}, reconnection: false,
                                   transports: ['websocket'] }});
        s.on('connect', () => console.log('connected'));
        s.on('disconnect', (r) => {{ console.log('disconnect', r); process.exit(0); }});
        setTimeout(() => process.exit(3), 30000);
        """, stdout=asyncio.subprocess.PIPE, cwd=str(ROOT))
    assert js.stdout is not None
    assert (await asyncio.wait_for(js.stdout.readline(), 15)).strip() == b"connected"
    assert hq.process is not None
    hq.process.send_signal(signal.SIGTERM)
    # Without the shutdown hook the process waits for the clients' ping timeout (~45 s).
    returncode = await asyncio.get_running_loop().run_in_executor(None, lambda: hq.process.wait(timeout=15))
    assert returncode == 0
    assert await asyncio.wait_for(js.wait(), 15) == 0
    await client.wait_disconnected()
    hq.process = None
    await client.close()
