"""Response headers several routes share."""

from __future__ import annotations

#: On every answer that carries tokens or an agent's details, and on every refusal: never cached.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
