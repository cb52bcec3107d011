"""Every live socket of the cluster: which node holds it, for whom, from where, since when.

Each process is a node with an id of its own (:attr:`ConnectionRegistry.node`, ``host:pid:random``,
made by :func:`hq.cluster.node.new_node_id` and shared with presence and the revocation bus).
The registry keeps this node's sockets in memory; that is the whole truth on a single node. With
``[cluster] redis_url`` each node also writes its sockets to Redis, so the directors' API on any
node can list the sockets of all of them:

* ``<prefix>:connections:node:<node>``, a hash: Socket.IO socket id → JSON record (login session id,
  codename, client address, transport, user agent, since, token expiry; never a token). Its TTL
  (``expiry``: ``[cluster] presence_ttl``, :data:`EXPIRY` by default) is refreshed every
  ``heartbeat`` seconds (``presence_heartbeat``), so the sockets of a node that dies without
  goodbye (SIGKILL, power cut) stop being listed within ``expiry`` seconds;
* ``<prefix>:connections:nodes``, the set of node ids that have written a hash (pruned by readers
  when a node's hash is gone).

Connecting and disconnecting never wait for Redis: :meth:`ConnectionRegistry.add` and
:meth:`~ConnectionRegistry.remove` change memory only and wake a writer task that sends the changes
in one pipeline. While Redis does not answer, the writer keeps the changes and writes this node's
whole hash back once it does (one warning per outage), and :meth:`~ConnectionRegistry.cluster`
lists this node's sockets only, saying so (``complete=False``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

import redis.asyncio as aioredis

from ..errors import describe
from .heartbeat import Heartbeat
from .node import new_node_id
from .redis import RETRY_AFTER, Outage, RedisBreaker

log = logging.getLogger(__name__)

#: Seconds between two refreshes of this node's hash TTL (and of changed transports).
HEARTBEAT = 5.0
#: TTL of a node's hash: a node that stopped refreshing it is no longer listed this long after.
EXPIRY = 15.0

#: ``transport_of(socket_id)``: the socket's transport now (a polling socket may have upgraded).
TransportSource = Callable[[str], "str | None"]


def now_iso() -> str:
    """The current UTC time as ISO 8601 with seconds (the ``since`` of a socket)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)  # one per live socket: no per-instance __dict__
class SocketRecord:
    """One live socket as the registry keeps it, under its socket id; ``session_id`` is its login session's."""

    node: str
    session_id: str
    codename: str
    address: str
    transport: str
    user_agent: str
    since: str
    #: When its token expires; None for a service key's socket (keys do not expire).
    exp: int | None

    def to_wire(self) -> dict[str, Any]:
        """The contract's socket shape: ``{"node", "address", "transport", "user_agent", "since", "exp"}``."""
        return {"node": self.node, "address": self.address, "transport": self.transport,
                "user_agent": self.user_agent, "since": self.since, "exp": self.exp}


@dataclass(frozen=True)
class Listing:
    """The cluster's sockets; ``complete`` is False when only this node's could be listed (Redis away)."""

    records: list[SocketRecord]
    complete: bool


class ConnectionRegistry:
    """This node's live sockets in memory and, with a Redis client, every node's through Redis.

    Without Redis it is one node's memory and needs no :meth:`start`. With Redis, call
    :meth:`start` and :meth:`stop` around the node's life. No method raises because of Redis.
    """

    def __init__(self, redis: aioredis.Redis | None = None, prefix: str = "hq", node: str | None = None,
                 heartbeat: float = HEARTBEAT, expiry: float = EXPIRY) -> None:
        self.node = node or new_node_id()
        self._redis = redis
        self._prefix = f"{prefix}:connections"
        self._heartbeat = heartbeat
        self._expiry = expiry
        self._local: dict[str, SocketRecord] = {}
        self._transport_of: TransportSource | None = None
        # Socket ids changed since the last write: written (present in _local) or deleted (absent).
        self._dirty: set[str] = set()
        self._write_back = True  # this node's hash in Redis may be missing or stale: write it whole
        self._next_beat = 0.0  # loop time of the next TTL refresh
        self._loop = Heartbeat("connection-registry", self._step)
        outage = Outage.of_redis(log, "connections", "listing this node's sockets only",
                                 "writing this node's sockets back")
        self._calls = RedisBreaker(redis, outage, on_lost=self._lost, on_back=self._loop.wake)

    @property
    def clustered(self) -> bool:
        """Whether other nodes' sockets are listed too (a Redis client was given)."""
        return self._redis is not None

    def follow_transports(self, transport_of: TransportSource) -> None:
        """Ask ``transport_of`` for a socket's current transport (a socket may upgrade after connect)."""
        self._transport_of = transport_of

    # this node's sockets: memory only, never a wait --------------------------------------------
    def add(self, socket_id: str, *, session_id: str, codename: str, address: str, transport: str,
            user_agent: str, exp: int | None) -> SocketRecord:
        """Count a socket that was just accepted; ``user_agent`` should already be clipped."""
        record = SocketRecord(self.node, session_id, codename, address, transport, user_agent, now_iso(), exp)
        self._local[socket_id] = record
        self._changed(socket_id)
        return record

    def update_expiry(self, socket_id: str, exp: int | None) -> None:
        """The socket's token was renewed (``reauth``)."""
        record = self._local.get(socket_id)
        if record is not None and record.exp != exp:
            self._local[socket_id] = replace(record, exp=exp)
            self._changed(socket_id)

    def remove(self, socket_id: str) -> None:
        """The socket is gone."""
        if self._local.pop(socket_id, None) is not None:
            self._changed(socket_id)

    def local(self) -> list[SocketRecord]:
        """This node's sockets, with their current transports."""
        self._refresh_transports()
        return list(self._local.values())

    def _changed(self, socket_id: str) -> None:
        if self._redis is not None:
            self._dirty.add(socket_id)
            self._loop.wake()

    def _refresh_transports(self) -> None:
        if self._transport_of is None:
            return
        for socket_id, record in list(self._local.items()):
            current = self._transport_of(socket_id)
            if current and current != record.transport:
                self._local[socket_id] = replace(record, transport=current)
                self._changed(socket_id)

    # the cluster --------------------------------------------------------------------------------
    async def cluster(self) -> Listing:
        """Every live node's sockets; this node's alone (``complete=False``) while Redis is away."""
        mine = self.local()
        if self._redis is None:
            return Listing(mine, True)
        others = await self._ask(self._read_others)
        if others is None:
            return Listing(mine, False)
        return Listing(mine + others, True)

    async def _read_others(self, redis: aioredis.Redis) -> list[SocketRecord]:
        nodes = [_text(n) for n in await redis.smembers(self._nodes_key)]
        nodes = [n for n in nodes if n != self.node]
        if not nodes:
            return []
        async with redis.pipeline(transaction=False) as pipe:
            for node in nodes:
                pipe.hgetall(self._node_key(node))
            hashes = await pipe.execute()
        records: list[SocketRecord] = []
        gone = []
        for node, entries in zip(nodes, hashes):
            if not entries:
                gone.append(node)  # expired (dead node) or empty; a live node adds itself back
                continue
            for raw in entries.values():
                record = _record(node, raw)
                if record is not None:
                    records.append(record)
        if gone:
            await redis.srem(self._nodes_key, *gone)
        return records

    async def start(self) -> None:
        """Start writing to Redis (with a client); a Redis that is down at start-up is retried, not fatal."""
        if self._redis is not None:
            self._loop.start()

    async def stop(self) -> None:
        """Stop writing and take this node's hash out of Redis (its sockets are closing)."""
        await self._loop.stop()
        if not self._calls.resting:
            await self._ask(self._leave)

    async def _leave(self, redis: aioredis.Redis) -> None:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._node_key(self.node))
            pipe.srem(self._nodes_key, self.node)
            await pipe.execute()

    # writing ------------------------------------------------------------------------------------
    @property
    def _expiry_ms(self) -> int:
        return max(1, round(self._expiry * 1000))

    @property
    def _nodes_key(self) -> str:
        return f"{self._prefix}:nodes"

    def _node_key(self, node: str) -> str:
        return f"{self._prefix}:node:{node}"

    async def _step(self) -> float:
        """Refresh the TTL when due and write what changed; the seconds until the next round."""
        now = self._clock()
        if now >= self._next_beat:
            self._refresh_transports()
            answered = await self._ask(self._beat) is not None
            self._next_beat = self._clock() + (self._heartbeat if answered else RETRY_AFTER)
        if (self._dirty or self._write_back) and not self._calls.resting:
            await self._ask(self._write)
        wait = self._next_beat - self._clock()
        if self._calls.failing:
            # Changes meanwhile wake the loop, but nothing is written before the pause is over.
            wait = min(wait, max(RETRY_AFTER, self._calls.seconds_until_retry()))
        return wait

    def _clock(self) -> float:
        return asyncio.get_running_loop().time()

    async def _beat(self, redis: aioredis.Redis) -> bool:
        """Refresh the TTL; a hash that expired meanwhile (a long pause) is written back whole."""
        key = self._node_key(self.node)
        async with redis.pipeline(transaction=False) as pipe:
            pipe.pexpire(key, self._expiry_ms)
            pipe.sadd(self._nodes_key, self.node)
            alive, _ = await pipe.execute()
        if not alive and self._local:
            self._write_back = True
        return True

    async def _write(self, redis: aioredis.Redis) -> None:
        key = self._node_key(self.node)
        whole, dirty = self._write_back, self._dirty
        self._write_back, self._dirty = False, set()
        try:
            async with redis.pipeline(transaction=True) as pipe:
                if whole:
                    pipe.delete(key)
                    written = {s: r for s, r in self._local.items()}
                    deleted: list[str] = []
                else:
                    written = {s: self._local[s] for s in dirty if s in self._local}
                    deleted = [s for s in dirty if s not in self._local]
                if written:
                    pipe.hset(key, mapping={s: _encode(r) for s, r in written.items()})
                if deleted:
                    pipe.hdel(key, *deleted)
                pipe.pexpire(key, self._expiry_ms)
                pipe.sadd(self._nodes_key, self.node)
                await pipe.execute()
        except BaseException:
            # Not written: keep what changed, and write everything once Redis answers again (some of
            # the pipeline may have been applied; a whole write is exact whatever happened).
            self._dirty |= dirty
            self._write_back = True
            raise

    async def _ask(self, call: Callable[[aioredis.Redis], Awaitable[Any]]) -> Any:
        """Run ``call`` against Redis within the deadline; None while Redis is away (never raises)."""
        async def answered(redis: aioredis.Redis) -> Any:
            result = await call(redis)
            return True if result is None else result  # None means Redis was away
        return await self._calls.ask(answered)

    def _lost(self) -> None:
        self._write_back = True


def _encode(record: SocketRecord) -> str:
    fields = asdict(record)
    del fields["node"]  # the key names the node
    return json.dumps(fields, separators=(",", ":"))


def _record(node: str, raw: Any) -> SocketRecord | None:
    """A record another node wrote; one that is malformed is skipped (and logged), never a failure."""
    try:
        fields = json.loads(raw)
        record = SocketRecord(node=node, session_id=str(fields["session_id"]), codename=str(fields["codename"]),
                              address=str(fields["address"]), transport=str(fields["transport"]),
                              user_agent=str(fields["user_agent"]), since=str(fields["since"]),
                              exp=None if fields["exp"] is None else int(fields["exp"]))
    except (ValueError, KeyError, TypeError) as error:
        log.warning("connections: skipped a malformed record of node %s (%s)", node, describe(error))
        return None
    return record


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
