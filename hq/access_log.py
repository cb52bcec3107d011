"""aiohttp's access log, minus anything secret: the query string's ``token`` is redacted."""

from __future__ import annotations

import re

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

_TOKEN_PARAM = re.compile(r"(?i)((?:^|[?&])(?:token|access_token|refresh_token)=)[^&]*")


def redact_query(path_qs: str) -> str:
    """A request target with token-bearing query parameters replaced by ``[redacted]``."""
    return _TOKEN_PARAM.sub(r"\1[redacted]", path_qs)


class RedactingAccessLogger(AbstractAccessLogger):
    """One line per request: address, method, path with secrets redacted, status, size, time."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info('%s "%s %s" %s %s %.4fs', request.remote, request.method,
                         redact_query(request.path_qs), response.status, response.body_length, time)
