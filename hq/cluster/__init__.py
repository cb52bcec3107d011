"""One node among several: the Redis client and its breaker, the node id, the heartbeat loop, presence,
the socket registry and revocation push (below auth/ and realtime/, above store/)."""
