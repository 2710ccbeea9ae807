"""How many CPUs this process may run on: its affinity mask where the OS has one (a container or ``taskset`` may
allow fewer than the machine has), else the machine's count."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
