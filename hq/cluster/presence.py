"""Who is online in each channel: on this node in memory, across the cluster in Redis.

An agent is *in* a channel while at least one of its sockets has joined it (and has not left it,
been demoted out of it by ``reauth``, or disconnected). :class:`Presence` answers the ``presence``
event (codename, stored role and number of live sockets per agent) and tells its listeners when an
agent's first socket in a channel arrives or its last one leaves, on any node.

Every node keeps its own sockets in memory (:class:`_LocalView`): that is the whole truth on a
single node, and this node's part of the truth in a cluster. With ``[cluster] redis_url`` each node
also writes, per channel and agent, how many sockets it holds (:class:`_RedisBoard`):

* ``<prefix>:presence:channel:<channel>``, a hash: lower-case codename → JSON
  ``{"codename", "role", "nodes": {node: sockets}}``, changed only by Lua scripts, so that exactly one
  node sees an agent's count across all nodes go from 0 to more (online) or back (offline);
* ``<prefix>:presence:alive:<node>``, refreshed every ``heartbeat`` seconds with a TTL of ``ttl``
  (``[cluster] presence_heartbeat`` and ``presence_ttl``, by default :data:`HEARTBEAT` and
  :data:`EXPIRY`): a node that dies (SIGKILL, power cut) stops refreshing it, and its counts stop
  counting within ``ttl`` seconds. The first live node to notice a dead one (in the set
  ``<prefix>:presence:nodes``) removes its counts and reports the agents that went offline.

Redis is never a reason for a join, leave or disconnect to fail or wait long: each call is bounded
and after a failure Redis is left alone for a while (:class:`hq.cluster.redis.RedisBreaker`), and meanwhile
this node's view answers (one warning per outage). When Redis answers again the node writes its
whole view back (counts changed or expired meanwhile) and reports what that changed.

The scripts read the alive keys of other nodes, which Redis Cluster (sharded) would refuse: HQ's
cluster uses one Redis (or a primary with replicas), as docs/scaling.md says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

import redis.asyncio as aioredis

from .heartbeat import Heartbeat
from .node import new_node_id
from .redis import RETRY_AFTER, Outage, RedisBreaker

log = logging.getLogger(__name__)

#: Default seconds between two refreshes of a node's alive key (and checks for dead nodes).
HEARTBEAT = 5.0
#: Default TTL of the alive key: a node that stopped refreshing it is gone from presence this long after.
EXPIRY = 15.0

#: ``listener(channel, codename, online)``: an agent's first socket in a channel arrived, or its last left.
PresenceListener = Callable[[str, str, bool], Awaitable[None]]


@dataclass(frozen=True)
class Member:
    """One agent online in a channel, as the ``presence`` ack lists it."""

    codename: str
    role: str
    connections: int

    def to_wire(self) -> dict[str, Any]:
        """The contract's shape: ``{"codename", "role", "connections"}``."""
        return {"codename": self.codename, "role": self.role, "connections": self.connections}


@dataclass
class _Sockets:
    codename: str
    role: str
    socket_ids: set[str] = field(default_factory=set)


class _LocalView:
    """This node's sockets per channel and agent (agents keyed by lower-case codename)."""

    def __init__(self) -> None:
        self._channels: dict[str, dict[str, _Sockets]] = {}

    def add(self, channel: str, socket_id: str, codename: str, role: str) -> bool:
        """Count ``socket_id`` in; True if it is the agent's first socket in the channel on this node."""
        agents = self._channels.setdefault(channel, {})
        entry = agents.setdefault(codename.lower(), _Sockets(codename, role))
        entry.codename, entry.role = codename, role  # the latest stored role at connect
        first = not entry.socket_ids
        entry.socket_ids.add(socket_id)  # a set: a socket that joins twice is still one socket
        return first

    def remove(self, channel: str, socket_id: str, codename: str) -> bool:
        """Count ``socket_id`` out; True if it was the agent's last socket in the channel on this node."""
        agents = self._channels.get(channel, {})
        entry = agents.get(codename.lower())
        if entry is None or socket_id not in entry.socket_ids:
            return False
        entry.socket_ids.discard(socket_id)
        if entry.socket_ids:
            return False
        del agents[codename.lower()]
        if not agents:
            del self._channels[channel]
        return True

    def entry(self, channel: str, key: str) -> _Sockets | None:
        """The agent's sockets in the channel on this node, if any."""
        return self._channels.get(channel, {}).get(key)

    def agents(self, channel: str) -> dict[str, _Sockets]:
        """Every agent with a socket in the channel on this node."""
        return dict(self._channels.get(channel, {}))


# KEYS[1] the channel's hash. ARGV[1] alive-key prefix, ARGV[2] the node written for, ARGV[3] JSON
# {key: [sockets, codename, role]} of that node, ARGV[4] "1" when ARGV[3] is the node's whole view of
# the channel (its other entries are dropped; how a node is written back or a dead one removed).
# Returns [codename, 1 | 0, ...] for every agent whose count over live nodes left or reached zero.
_SYNC = """
local alive = {}
local function live(node)
  if node == ARGV[2] then return true end
  if alive[node] == nil then alive[node] = redis.call('EXISTS', ARGV[1] .. node) == 1 end
  return alive[node]
end
local view = cjson.decode(ARGV[3])
local keys = {}
for key in pairs(view) do keys[key] = true end
if ARGV[4] == '1' then
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    if cjson.decode(all[i + 1]).nodes[ARGV[2]] then keys[all[i]] = true end
  end
end
local changed = {}
for key in pairs(keys) do
  local raw = redis.call('HGET', KEYS[1], key)
  local entry = raw and cjson.decode(raw) or {nodes = {}}
  local nodes, before, after = {}, 0, 0
  for node, count in pairs(entry.nodes) do
    if live(node) then
      before = before + count
      if node ~= ARGV[2] then nodes[node] = count; after = after + count end
    end
  end
  local codename, role = entry.codename, entry.role
  local mine = view[key]
  if mine and mine[1] > 0 then
    nodes[ARGV[2]] = mine[1]; after = after + mine[1]; codename, role = mine[2], mine[3]
  end
  if after == 0 then
    redis.call('HDEL', KEYS[1], key)
  else
    redis.call('HSET', KEYS[1], key, cjson.encode({codename = codename, role = role, nodes = nodes}))
  end
  if (before == 0) ~= (after == 0) then
    table.insert(changed, codename); table.insert(changed, after > 0 and 1 or 0)
  end
end
return changed
"""

# KEYS[1] the channel's hash. ARGV[1] alive-key prefix, ARGV[2] the asking node (its own counts are
# left out: its memory is fresher). Returns [codename, role, sockets, ...] over the other live nodes.
_LIST = """
local alive = {}
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local entry = cjson.decode(all[i + 1])
  local sockets = 0
  for node, count in pairs(entry.nodes) do
    if node ~= ARGV[2] then
      if alive[node] == nil then alive[node] = redis.call('EXISTS', ARGV[1] .. node) == 1 end
      if alive[node] then sockets = sockets + count end
    end
  end
  if sockets > 0 then
    table.insert(out, entry.codename); table.insert(out, entry.role); table.insert(out, sockets)
  end
end
return out
"""


class _RedisBoard:
    """The cluster's presence in Redis: this node's counts, alive keys, and the scripts over them."""

    def __init__(self, redis: aioredis.Redis, prefix: str, ttl: float, node: str) -> None:
        self.node = node  # a new one per process: a restarted node never revives old counts
        self._redis = redis
        self._ttl_ms = max(1, round(ttl * 1000))
        self._prefix = f"{prefix}:presence"
        self._sync = redis.register_script(_SYNC)
        self._list = redis.register_script(_LIST)

    def _channel_key(self, channel: str) -> str:
        return f"{self._prefix}:channel:{channel}"

    @property
    def _alive_prefix(self) -> str:
        return f"{self._prefix}:alive:"

    @property
    def _nodes_key(self) -> str:
        return f"{self._prefix}:nodes"

    async def write(self, channel: str, node: str, view: dict[str, _Sockets], whole: bool) -> list[tuple[str, bool]]:
        """Set ``node``'s counts in ``channel`` to ``view``; the agents whose online state changed."""
        counts = {key: [len(s.socket_ids), s.codename, s.role] for key, s in view.items()}
        reply = await self._sync(keys=[self._channel_key(channel)],
                                 args=[self._alive_prefix, node, json.dumps(counts), "1" if whole else "0"])
        return [(_text(reply[i]), bool(reply[i + 1])) for i in range(0, len(reply), 2)]

    async def others(self, channel: str) -> list[Member]:
        """The channel's agents on the other live nodes, with their sockets there."""
        reply = await self._list(keys=[self._channel_key(channel)], args=[self._alive_prefix, self.node])
        return [Member(_text(reply[i]), _text(reply[i + 1]), int(reply[i + 2])) for i in range(0, len(reply), 3)]

    async def heartbeat(self) -> bool:
        """Refresh this node's alive key; True if it had expired (or never existed): write everything back."""
        previous = await self._redis.set(f"{self._alive_prefix}{self.node}", "1", px=self._ttl_ms, get=True)
        await self._redis.sadd(self._nodes_key, self.node)
        return previous is None

    async def claim_dead(self) -> list[str]:
        """Nodes whose alive key expired, each claimed by exactly one live node (this one, if returned)."""
        claimed = []
        for node in map(_text, await self._redis.smembers(self._nodes_key)):
            if node != self.node and not await self._redis.exists(f"{self._alive_prefix}{node}"):
                if await self._redis.srem(self._nodes_key, node):
                    claimed.append(node)
        return claimed

    async def leave(self) -> None:
        """This node is stopping: it is no longer alive."""
        await self._redis.delete(f"{self._alive_prefix}{self.node}")
        await self._redis.srem(self._nodes_key, self.node)


class Presence:
    """Who is online per channel; reports each agent's arrival in and departure from a channel.

    Without a Redis client it is one node's memory. With one, see the module's docstring; call
    :meth:`start` and :meth:`stop` around the node's life. No method raises because of Redis.
    ``heartbeat`` and ``ttl`` (seconds, ``0 < heartbeat < ttl``) pace the alive key; ``node`` is this
    process's id (:func:`hq.cluster.node.new_node_id`, the same for every part of the node).
    """

    def __init__(self, channels: Iterable[str], redis: aioredis.Redis | None = None, prefix: str = "hq",
                 heartbeat: float = HEARTBEAT, ttl: float = EXPIRY, node: str | None = None) -> None:
        if not 0 < heartbeat < ttl:
            raise ValueError(f"presence needs 0 < heartbeat < ttl, got {heartbeat} and {ttl}")
        self._channels = tuple(channels)
        self._local = _LocalView()
        self._heartbeat = heartbeat
        self.node = node or new_node_id()
        self._board = _RedisBoard(redis, prefix, ttl, self.node) if redis is not None else None
        self._listeners: list[PresenceListener] = []
        # One Redis write at a time per (channel, agent): each writes the count as it is when it runs,
        # so a late write can never overwrite a newer count with an older one.
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, list[int]]] = {}
        self._write_back = True  # this node's counts in Redis may be missing or stale
        self._stopped = False
        self._beat = Heartbeat("presence-heartbeat", self._heartbeat_step)
        outage = Outage.of_redis(log, "presence", "showing this node's agents only", "writing this node's agents back")
        self._calls = RedisBreaker(self._board, outage, on_lost=self._lost, on_back=self._beat.wake)

    def on_change(self, listener: PresenceListener) -> None:
        """Call ``listener(channel, codename, online)`` when an agent comes online in a channel or leaves it."""
        self._listeners.append(listener)

    async def joined(self, channel: str, socket_id: str, codename: str, role: str) -> None:
        """Socket ``socket_id`` of ``codename`` (stored role ``role``) joined ``channel``."""
        first = self._local.add(channel, socket_id, codename, role)
        await self._changed(channel, codename, True if first else None)

    async def left(self, socket_id: str, codename: str, channels: Iterable[str]) -> None:
        """Socket ``socket_id`` of ``codename`` is no longer in ``channels`` (left, demoted or disconnected)."""
        changes = [(channel, self._local.remove(channel, socket_id, codename)) for channel in channels]
        await asyncio.gather(*(self._changed(channel, codename, False if last else None) for channel, last in changes))

    async def members(self, channel: str) -> list[Member]:
        """Every agent online in ``channel`` on any live node (this node's alone while Redis is away)."""
        merged = {key: Member(s.codename, s.role, len(s.socket_ids)) for key, s in self._local.agents(channel).items()}
        others = await self._ask(lambda board: board.others(channel))
        for member in others or []:
            mine = merged.get(member.codename.lower())
            merged[member.codename.lower()] = member if mine is None else Member(
                mine.codename, mine.role, mine.connections + member.connections)
        return sorted(merged.values(), key=lambda m: m.codename.lower())

    async def start(self) -> None:
        """Start the heartbeat (with Redis); a Redis that is down at start-up is retried, not fatal."""
        if self._board is not None:
            self._beat.start()

    async def stop(self) -> None:
        """Stop the heartbeat and take this node's counts out of Redis (its agents go offline there)."""
        self._stopped = True
        await self._beat.stop()
        if self._board is not None and not self._calls.resting:
            for channel in self._channels:
                await self._report(channel, await self._ask(lambda b, c=channel: b.write(c, b.node, {}, True)))
            await self._ask(lambda b: b.leave())

    # changes ------------------------------------------------------------------------------------
    async def _changed(self, channel: str, codename: str, local: bool | None) -> None:
        """Write the agent's count here to Redis and report what changed, or what this node saw."""
        key = codename.lower()
        if self._board is None or self._stopped:
            await self._report(channel, [] if local is None else [(codename, local)])
            return
        async with self._one_at_a_time((channel, key)):
            entry = self._local.entry(channel, key)
            view = {key: entry} if entry is not None else {key: _Sockets(codename, "", set())}
            changed = await self._ask(lambda board: board.write(channel, board.node, view, False))
        if changed is None:  # Redis is away: this node's view is all there is
            self._write_back = True
            changed = [] if local is None else [(codename, local)]
        await self._report(channel, changed)

    async def _report(self, channel: str, changed: list[tuple[str, bool]] | None) -> None:
        for codename, online in changed or []:
            for listener in self._listeners:
                try:
                    await listener(channel, codename, online)
                except Exception:  # a listener must not break a join, leave or disconnect
                    log.exception("presence listener failed")

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, key: tuple[str, str]) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]

    # Redis --------------------------------------------------------------------------------------
    async def _ask(self, call: Callable[[_RedisBoard], Awaitable[Any]]) -> Any:
        """Run ``call`` against Redis within the deadline; None while Redis is away (never raises)."""
        return await self._calls.ask(call)

    def _lost(self) -> None:
        self._write_back = True

    async def _heartbeat_step(self) -> float:
        """Refresh this node's alive key, write its view back if needed, reap dead nodes; the next wait."""
        expired = await self._ask(lambda b: b.heartbeat())
        if expired is not None:
            if expired or self._write_back:
                await self._write_all()
            for node in await self._ask(lambda b: b.claim_dead()) or []:
                await self._reap(node)
        return RETRY_AFTER if self._calls.failing else self._heartbeat

    async def _write_all(self) -> None:
        """Write this node's whole view back (after an outage or an expiry) and report what changed."""
        self._write_back = False
        for channel in self._channels:
            # Under every agent's lock would be exact, but a write-back is rare and each later
            # single-agent write corrects its own count anyway.
            changed = await self._ask(lambda b, c=channel: b.write(c, b.node, self._local.agents(c), True))
            if changed is None:
                return  # _ask set _write_back again
            await self._report(channel, changed)

    async def _reap(self, node: str) -> None:
        """Remove a dead node's counts; its agents that are nowhere else go offline."""
        log.info("presence: node %s stopped answering; its agents are offline", node[:8])
        for channel in self._channels:
            await self._report(channel, await self._ask(lambda b, c=channel: b.write(c, node, {}, True)))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
