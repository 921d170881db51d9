"""What the benchmark scripts print about the machine they ran on."""

import os
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


def load_average() -> str:
    """The 1, 5 and 15 minute load averages ("unknown" where the OS has none): how busy the
    machine was, which moves wall-clock timings."""
    if not hasattr(os, "getloadavg"):
        return "unknown"
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
