"""The ``pipeline`` command run as users run it: a subprocess in the checkout."""

from __future__ import annotations

import os
import subprocess
import sys

from services import ROOT


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``pipeline`` with ``args``, with ``env`` over the test environment; its output and status."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
