"""JSON for Socket.IO packets: orjson when it can, the standard library when it cannot.

python-socketio accepts any module-like object with ``dumps`` and ``loads``; orjson is several
times faster but returns bytes and rejects a few inputs the standard library accepts (lone
surrogates), which must never turn into a dropped packet.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


class SocketJSON:
    """The ``json`` object handed to ``socketio.AsyncServer``."""

    @staticmethod
    def dumps(obj: Any, *args: Any, **kwargs: Any) -> str:
        try:
            return orjson.dumps(obj).decode("utf-8")
        except TypeError:
            return json.dumps(obj, separators=(",", ":"))

    @staticmethod
    def loads(text: str | bytes, *args: Any, **kwargs: Any) -> Any:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return json.loads(text)
