"""How busy the machine was around a timed step, for the benchmarks (Linux /proc; None elsewhere).

On 2 shared cores another process can slow a step 4-28x (see ../shared/reference), so each
benchmark reads these before and after every timed step and reruns or flags contended ones.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["busy_s", "cpu_pressure", "own_cpu_s", "stall_us"]


def cpu_pressure() -> str | None:
    """Linux PSI ``some`` line of /proc/pressure/cpu: share of time runnable tasks waited."""
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None


def stall_us() -> int | None:
    """Cumulative µs some runnable task waited for a CPU (Linux PSI), or None where absent."""
    line = cpu_pressure()
    return int(line.rsplit("total=", 1)[1]) if line and "total=" in line else None


def busy_s() -> float | None:
    """CPU seconds the whole machine has been busy (``/proc/stat``, steal included)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system
