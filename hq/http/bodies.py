"""Reading a request's JSON body within a size limit; a body that cannot be read is refused by raising."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..errors import RequestError


async def read_json_body(request: web.Request, limit: int) -> dict[str, Any]:
    """The request's JSON object; raises :class:`RequestError` ``payload_too_large`` (over ``limit``
    bytes), ``unsupported_media_type`` (not ``application/json``) or ``bad_request`` (not a JSON object)."""
    if request.content_length is not None and request.content_length > limit:
        raise RequestError(f"request bodies are limited to {limit} bytes", "payload_too_large")
    if request.content_type != "application/json":
        raise RequestError("send Content-Type: application/json", "unsupported_media_type")
    raw = await _read_at_most(request, limit + 1)
    if len(raw) > limit:  # a chunked body announces no length
        raise RequestError(f"request bodies are limited to {limit} bytes", "payload_too_large")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RequestError("the body is not valid JSON", "bad_request") from None
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object", "bad_request")
    return body


async def _read_at_most(request: web.Request, size: int) -> bytes:
    """Up to ``size`` bytes of the body; ``content.read(n)`` alone stops at the first chunk."""
    raw = bytearray()
    while len(raw) < size:
        chunk = await request.content.read(size - len(raw))
        if not chunk:
            break
        raw += chunk
    return bytes(raw)


def checked_fields(body: dict[str, Any], types: dict[str, type], required: tuple[str, ...]) -> dict[str, Any]:
    """``body`` checked strictly: known fields only, each of its type (``true`` is no string, ``1`` no bool)."""
    unknown = sorted(set(body) - types.keys())
    if unknown:
        raise RequestError(f"unknown field {unknown[0][:64]!r}; expected: {', '.join(types)}", "bad_request")
    for name in required:
        if name not in body:
            raise RequestError(f'"{name}" is required', "bad_request")
    for name, value in body.items():
        if type(value) is not types[name]:
            kind = "true or false" if types[name] is bool else "a string"
            raise RequestError(f'"{name}" must be {kind}', "bad_request")
    return body
