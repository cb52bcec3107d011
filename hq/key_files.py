"""Key files HQ generates on first use (the HMAC signing secret, the MFA sealing key): made once,
readable by their owner only, and never seen half-written.

Several processes may start at once on one folder (``serve --workers``, a CLI beside a server, a
test's two nodes). Creating the file in place with ``O_EXCL`` and then writing it lets a second
process read it in between — empty — and refuse to start. Here the key is written whole to a
temporary file of its own first and then linked into place: ``link`` fails if the file already
exists, so exactly one process's key wins and every process reads a complete one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Callable


def read_or_create(path: Path, generate: Callable[[], bytes]) -> bytes:
    """The stripped contents of ``path``; if it does not exist, ``generate()`` written there (mode
    0600, a newline after it) by whichever process gets there first, and that one's key returned."""
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(generate() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another process was first: its key is the key
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path.read_bytes().strip()
