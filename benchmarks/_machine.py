"""What machine a benchmark ran on, for its JSON lines and RESULTS.md."""

from __future__ import annotations

import platform
import subprocess


def cpu_name() -> str:
    """The CPU model as ``lscpu`` names it (``platform.processor()`` without lscpu)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()
