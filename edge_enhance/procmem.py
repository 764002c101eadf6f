"""Resident memory of this process from /proc/self/status (Linux); None where it cannot be read."""
from __future__ import annotations


def status_mb(field: str = "VmRSS") -> float | None:
    """``VmRSS`` (current resident set) or ``VmHWM`` (its peak) in MB, None without /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None
