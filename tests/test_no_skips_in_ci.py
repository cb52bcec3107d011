"""CI allows no skipped test: ``HQ_TESTS_NO_SKIPS=1`` (set by ``.ci/run``) turns a skip into a failed run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .support import ROOT


@pytest.mark.parametrize(("setting", "exit_code"), [("1", 1), ("", 0)])
def test_a_skipped_test_fails_the_run_only_when_asked(tmp_path: Path, setting: str, exit_code: int) -> None:
    (tmp_path / "test_prerequisite.py").write_text(
        "import pytest\n\ndef test_needs_something():\n    pytest.skip('a prerequisite is missing')\n")
    env = {**os.environ, "HQ_TESTS_NO_SKIPS": setting}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
                          "--rootdir", str(tmp_path), str(tmp_path / "test_prerequisite.py")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == exit_code, run.stdout + run.stderr
    assert "1 skipped" in run.stdout
    assert ("which CI does not allow" in run.stdout) == (exit_code == 1)
