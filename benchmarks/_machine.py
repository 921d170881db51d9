"""What the benchmark scripts print about the machine they ran on."""

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's name as /proc/cpuinfo gives it (or what platform knows elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
