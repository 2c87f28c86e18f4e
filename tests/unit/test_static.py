"""The package stays lint-clean (ruff) and type-clean (mypy --strict).

Both tools are pinned in the ``test`` extra so that a fresh machine reports
exactly what the development machine does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=240)


def test_ruff_is_clean():
    r = run("ruff", "check", "meshadapter")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict_is_clean():
    r = run("mypy", "meshadapter")
    assert r.returncode == 0, r.stdout + r.stderr
