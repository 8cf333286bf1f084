"""Run a script from ``examples/`` the way a user would: a fresh interpreter, repo root as cwd."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_example(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python examples/NAME ARGS…``; returns the finished process (output captured as text)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
