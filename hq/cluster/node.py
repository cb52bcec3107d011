"""This process's identity as a node of the cluster: one id, made once per process in :func:`hq.app.build`.

Presence, the socket registry, the revocation bus and the Socket.IO fan-out all name this process
by the same id in Redis, so that one node is one name in every key, message and log line.
"""

from __future__ import annotations

import os
import socket
import uuid


def new_node_id() -> str:
    """An id for this process as a node: host and pid for people, a random part so that it is never reused.

    A new one per process: a restarted node never revives the counts, sockets or messages of the
    process it replaces (they expire with the old id).
    """
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
