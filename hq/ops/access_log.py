"""The server's own logs, minus anything secret.

aiohttp's access log prints the query string (``?token=...``) and its parser prints a whole bad
request line or header (``Authorization: Bearer ...``) with the traceback; both are redacted here.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

_SECRET_PARAMS = frozenset({"token", "access_token", "refresh_token", "jwt", "hq_refresh"})
# Anything that may carry a token in free log text: a JWT, a "name=value" of a secret parameter
# or cookie, or a Bearer credential. The name stays; only the secret goes.
_SECRET_TEXT = re.compile(
    r"()eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
    r"|((?i:\b(?:token|access_token|refresh_token|jwt|hq_refresh)=))(?!\[redacted\])[^\s&;,'\"]+"
    r"|((?i:\bbearer\s+))[^\s'\"]+")
REDACTED = "[redacted]"


def redact_query(path_qs: str) -> str:
    """A request target with token-bearing query parameters replaced by ``[redacted]``.

    Parameter names are compared after percent-decoding (``tok%65n`` is still ``token``), and both
    ``&`` and ``;`` count as separators, so no spelling of the parameter slips through.
    """
    path, question, query = path_qs.partition("?")
    if not question:
        return path_qs
    parts = re.split(r"([&;])", query)
    for index in range(0, len(parts), 2):
        name, equals, _ = parts[index].partition("=")
        if equals and unquote_plus(name).strip().lower() in _SECRET_PARAMS:
            parts[index] = f"{name}={REDACTED}"
    return f"{path}?{''.join(parts)}"


def redact_text(text: str) -> str:
    """Free text with every token-shaped run replaced by ``[redacted]``."""
    return _SECRET_TEXT.sub(lambda match: "".join(g or "" for g in match.groups()) + REDACTED, text)


class RedactingFilter(logging.Filter):
    """A handler filter that scrubs token-shaped text from each record's message and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = redact_text(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


class RedactingAccessLogger(AbstractAccessLogger):
    """One line per request: address, method, path with secrets redacted, status, size, time."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info('%s "%s %s" %s %s %.4fs', request.remote, request.method,
                         redact_query(request.path_qs), response.status, response.body_length, time)
