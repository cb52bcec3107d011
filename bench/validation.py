"""What validating real-time payloads (hq/realtime/schemas.py) costs, alone and as a share of the message path.

1. Per payload: ``PayloadSchemas.decode("message", ...)`` (msgspec) against the alternatives: the
   hand-written isinstance checks HQ had before, pydantic v2 (when installed) and jsonschema over the
   same generated JSON Schema. Best of several repeats, nanoseconds per call.
2. The message path: HQ runs in this process on a loop of its own thread (bench/tasks.py's server);
   a raw Socket.IO client on another loop sends acknowledged ``message`` events. The HQ loop thread's
   CPU time per message (``time.thread_time``, so neither the client nor SQLite's worker thread is
   counted: the share comes out larger, never flattered) is measured with the schemas, and again with
   ``decode`` swapped for a stand-in that builds the same Struct without checking anything. The share
   is reported both ways: (1)'s per-call cost over the path's CPU per message, and the A/B difference.

    .venv/bin/python bench/validation.py [--messages 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import timeit
from pathlib import Path
from typing import Any, Callable

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import msgspec  # noqa: E402

from hq.errors import EventError  # noqa: E402
from hq.realtime import schemas  # noqa: E402
from hq.realtime.schemas import MessagePayload, PayloadSchemas  # noqa: E402
from tasks import PASSWORD, CountingServer, open_raw, start_counting_server  # noqa: E402

PAYLOAD = {"channel": "hq", "text": "Proceed to the rendezvous at 0400; the package is in locker 12."}


def hand_written(payload: Any) -> tuple[str, str]:
    """HQ's checks before the schemas (realtime.py's ``_channel`` and ``_message``), for comparison."""
    if isinstance(payload, str):
        payload = {"channel": "hq", "text": payload}
    if not isinstance(payload, dict) or not isinstance(payload.get("channel"), str):
        raise EventError('expected {"channel": string}', "bad_request")
    text = payload.get("text")
    if not isinstance(text, str) or not text:
        raise EventError('expected {"channel": string, "text": non-empty string}', "bad_request")
    return payload["channel"], text


def validators() -> dict[str, Callable[[Any], Any]]:
    """Each candidate, as a callable validating one ``message`` payload."""
    decoder = PayloadSchemas()
    found: dict[str, Callable[[Any], Any]] = {
        "msgspec (PayloadSchemas.decode)": lambda payload: decoder.decode("message", payload),
        "msgspec.convert alone": lambda payload: msgspec.convert(payload, MessagePayload),
        "hand-written isinstance checks": hand_written,
    }
    try:
        import pydantic

        class PydanticMessage(pydantic.BaseModel):
            channel: pydantic.StrictStr
            text: pydantic.constr(strict=True, min_length=1)  # type: ignore[valid-type]

        found[f"pydantic {pydantic.VERSION} (model_validate)"] = PydanticMessage.model_validate
    except ImportError:
        pass
    try:
        import jsonschema

        (schema,), components = msgspec.json.schema_components([MessagePayload], "#/$defs/{name}")
        validator = jsonschema.Draft202012Validator({**schema, "$defs": components})
        found[f"jsonschema {jsonschema.__version__} (Draft 2020-12)"] = validator.validate
    except ImportError:
        pass
    return found


def per_call_ns(validate: Callable[[Any], Any], repeats: int = 7, number: int = 20000) -> float:
    """Best-of-``repeats`` nanoseconds per call."""
    return min(timeit.repeat(lambda: validate(PAYLOAD), repeat=repeats, number=number)) / number * 1e9


def unchecked_decode(self: PayloadSchemas, event: str, payload: Any) -> Any:
    """The stand-in without validation: the same Struct, built without a single check."""
    if isinstance(payload, str):
        return MessagePayload("hq", payload)
    return MessagePayload(payload["channel"], payload["text"])


async def thread_cpu(server: CountingServer) -> float:
    """The HQ loop thread's CPU seconds so far (read on that thread)."""
    async def read() -> float:
        return time.thread_time()
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(read(), server.loop))


async def path_cpu_per_message(server: CountingServer, messages: int, rounds: int) -> dict[str, list[float]]:
    """HQ's CPU microseconds per acknowledged message, per round, with and without validation."""
    url = f"http://127.0.0.1:{server.port}"
    real_decode = PayloadSchemas.decode
    results: dict[str, list[float]] = {"with validation": [], "without validation": []}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/auth/login", json={"username": "sender", "password": PASSWORD}) as r:
            token = (await r.json())["access_token"]
        sender = await open_raw(http, url, token)
        for number in range(200):  # warm-up
            await sender.call(number, "message", PAYLOAD)
        for _ in range(rounds):
            for label, decode in (("with validation", real_decode), ("without validation", unchecked_decode)):
                PayloadSchemas.decode = decode  # type: ignore[method-assign]
                try:
                    before = await thread_cpu(server)
                    for number in range(messages):
                        ack = await sender.call(number, "message", PAYLOAD)
                        assert '"ok":true' in ack, ack
                    results[label].append((await thread_cpu(server) - before) / messages * 1e6)
                finally:
                    PayloadSchemas.decode = real_decode  # type: ignore[method-assign]
    return results


def main() -> None:
    """Print both measurements as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000, help="messages per round and variant")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    per_call = {name: round(per_call_ns(validate), 1) for name, validate in validators().items()}
    server = start_counting_server(ROOT, "hq-validation-", {"sender": "handler"},
                                   "[limits]\nevents_per_second = 1e6\nevents_burst = 1000000\n")
    path = asyncio.run(path_cpu_per_message(server, args.messages, args.rounds))
    with_validation = statistics.median(path["with validation"])
    without = statistics.median(path["without validation"])
    decode_us = per_call["msgspec (PayloadSchemas.decode)"] / 1000
    print(json.dumps({
        "validation of one message payload (ns per call, best of 7)": per_call,
        "HQ loop thread CPU per acknowledged message (us, per round)": {k: [round(v, 1) for v in vs]
                                                                       for k, vs in path.items()},
        "median with / without validation (us)": [round(with_validation, 1), round(without, 1)],
        "validation share of the message path (per-call cost / path CPU)": f"{decode_us / with_validation:.2%}",
        "validation share of the message path (A/B difference / path CPU)":
            f"{(with_validation - without) / with_validation:.2%}",
        "msgspec": msgspec.__version__, "schemas module": schemas.__name__,
    }, indent=2))


if __name__ == "__main__":
    main()
