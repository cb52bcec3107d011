"""The console's `Online` list (contract §7): who is in the open channel, kept live by presence events."""

from __future__ import annotations

from playwright.async_api import expect

from ..support import HQServer
from .conftest import OpenConsole
from .test_console import agent


async def test_the_online_list_follows_the_open_channel(hq: HQServer, open_console: OpenConsole) -> None:
    console = await open_console(hq)
    await console.log_in("dora")
    online = console.page.get_by_role("list", name="Online", exact=True)
    agents = online.get_by_role("listitem")
    await expect(agents).to_have_count(1)  # dora, in missions (the first channel she may read)
    await expect(agents.first).to_contain_text("dora")
    await expect(agents.first).to_contain_text("director")

    hank = await agent(hq, "hank", "missions")
    hank2 = await agent(hq, "hank", "missions")
    await expect(agents).to_have_count(2)
    # The event says who arrived; the role and the socket count come from asking again.
    await expect(agents.filter(has_text="hank")).to_contain_text("handler")
    await expect(agents.filter(has_text="hank")).to_contain_text("2 connections")

    await console.channel.select_option("hq")  # hank never joined hq
    await expect(agents).to_have_count(1)
    await expect(agents.first).to_contain_text("dora")
    assert (await hank.call("join", {"channel": "hq"}))["ok"]
    await expect(agents.filter(has_text="hank")).to_have_count(1)

    await hank.close()
    await expect(agents).to_have_count(1)  # hank's only socket in hq is gone
    await console.channel.select_option("missions")
    await expect(agents).to_have_count(2)  # hank2 is still in missions
    await hank2.close()
    await expect(agents).to_have_count(1)
