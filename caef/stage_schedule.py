"""Which stages of ``caef pipeline`` run side by side, and with how many CPU threads each.

Stages start in the pipeline's order. With ``parallel_stages: N`` in the experiment file, up to N consecutive
stages that do not read each other's results form a group and run at once, each in its own process with an equal
share of the CPU threads (``OMP_NUM_THREADS``, else the CPUs this process may use); the next group starts when the
whole group has finished. On a CPU this pays where one process uses its threads poorly: the demo's two DeepLabs
(on pseudo labels and on ground truth) run as one group. A group of one stage runs exactly as without the setting.
The stages' settings, and so their fingerprints and results, do not depend on the grouping.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from caef.cpus import usable_cpus


def stage_groups(stages: Sequence[str], needs: Callable[[str], Sequence[str]], parallel: int) -> list[tuple[str, ...]]:
    """``stages`` (in order) cut into groups of at most ``parallel`` consecutive stages, none of which needs
    another of its group."""
    groups: list[tuple[str, ...]] = []
    current: list[str] = []
    for stage in stages:
        if current and (len(current) >= max(1, parallel) or any(need in current for need in needs(stage))):
            groups.append(tuple(current))
            current = []
        current.append(stage)
    if current:
        groups.append(tuple(current))
    return groups


def stage_threads(environ: Mapping[str, str] | None = None) -> int:
    """The CPU threads a stage process computes with: its ``OMP_NUM_THREADS``, else every CPU this process may use.
    Recorded per stage (``stage_threads`` in summary.json): on a CPU the thread count moves results by about a point."""
    environ = os.environ if environ is None else environ
    try:
        threads = int(environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        threads = 0
    return threads if threads > 0 else usable_cpus()


def thread_share(group_size: int, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment that gives each of ``group_size`` side-by-side stages its share of the CPU threads (at least
    one); empty for a stage that runs alone, which keeps the environment it was given."""
    if group_size <= 1:
        return {}
    share = str(max(1, stage_threads(environ) // group_size))
    return {"OMP_NUM_THREADS": share, "MKL_NUM_THREADS": share}


def wall_seconds(groups: Sequence[Sequence[str]], seconds: Mapping[str, float | None]) -> float:
    """The wall time of stages run in ``groups``: the longest stage of each group, summed."""
    return round(sum(max((seconds.get(stage) or 0.0) for stage in group) for group in groups), 1)


def print_tail(log: Path, title: str, lines: int = 20) -> None:
    """The last ``lines`` lines of a side-by-side stage's log, on stderr (where its traceback would have been)."""
    try:
        text = log.read_text(errors="replace").replace("\r", "\n").splitlines()
    except OSError:
        return
    print("\n".join([title, *text[-lines:]]), file=sys.stderr, flush=True)
