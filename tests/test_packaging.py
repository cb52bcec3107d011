"""Packaging: the console's socket.io-client is committed, is the version package-lock.json pins,
and ships in the sdist and wheel built from a clean clone, so HQ serves it without npm.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from .support import ROOT

# Builds the sdist and wheel: `make test` runs it, `make test-fast` does not.
pytestmark = pytest.mark.packaging

CLIENT = "hq/web/vendor/socket.io.esm.min.js"
NPM_CLIENT = ROOT / "node_modules/socket.io-client/dist/socket.io.esm.min.js"
# The banner socket.io-client's build puts first in the file: "/*!\n * Socket.IO v4.8.4\n".
BANNER = re.compile(rb"/\*!\s*\* Socket\.IO v(\S+)\s")


def _locked_version() -> str:
    lock = json.loads((ROOT / "package-lock.json").read_text(encoding="utf-8"))
    return lock["packages"]["node_modules/socket.io-client"]["version"]


def test_vendored_client_is_the_locked_version() -> None:
    banner = BANNER.match((ROOT / CLIENT).read_bytes())
    assert banner, f"{CLIENT} does not start with socket.io-client's banner"
    assert banner[1].decode() == _locked_version(), "run `make vendor` and commit the copy"


def test_vendored_client_is_the_npm_build() -> None:
    if not NPM_CLIENT.exists():
        pytest.skip("node_modules is not installed (make js-deps)")
    assert (ROOT / CLIENT).read_bytes() == NPM_CLIENT.read_bytes(), "run `make vendor` and commit the copy"


@pytest.mark.timeout(60)
def test_sdist_and_wheel_from_a_clean_clone_carry_the_client(tmp_path: Path) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    # A clone sees only what is committed: exactly what a release build starts from.
    clone, dist = tmp_path / "clone", tmp_path / "dist"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=30)
    # sdist first, then the wheel from the sdist, as `python -m build` does; offline (--no-isolation).
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(clone)],
                           capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    [wheel] = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert CLIENT in names, f"the wheel lacks {CLIENT}: is it committed?"
        assert archive.read(CLIENT) == (clone / CLIENT).read_bytes()
        assert {"hq/web/index.html", "hq/web/console.js", "hq/web/console.css"} <= names
    [sdist] = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        assert any(name.endswith(f"/{CLIENT}") for name in archive.getnames())
