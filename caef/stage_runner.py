"""One stage process of ``caef pipeline``: started in its own process group, stopped as a whole on a signal.

SIGTERM (what a scheduler sends) or SIGINT (Ctrl-C) to the pipeline raise :class:`Interrupted` in it; the stage's
process group (the stage and its DataLoader workers) gets SIGTERM, then SIGKILL after a grace period, so nothing is
left running to write into the run folder while a rerun starts. Also here: which checkpoint a stage resumes from.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: seconds a stopped stage gets to exit on SIGTERM before its process group is killed
STOP_GRACE_S = 20.0
#: the stage processes running now, in any thread
_LIVE: set[subprocess.Popen] = set()
_LIVE_LOCK = threading.RLock()  # re-entrant: the signal handler may run while its own thread holds it
#: set once a signal stopped the stages: a stage thread that has not started its process yet must not start it
_STOPPED = threading.Event()


class Interrupted(BaseException):
    """The pipeline received ``signum``; a BaseException so that no ``except Exception`` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.stage: str | None = None  # the stage it stopped, once known


@contextmanager
def stop_signals(install: bool = True) -> Iterator[None]:
    """While the block runs, SIGTERM and SIGINT stop every running stage's process group and raise
    :class:`Interrupted` (only possible in the main thread; ``install=False`` leaves the handlers alone, e.g. for a
    pipeline run in a worker thread of ``caef sweep``, whose main thread wraps its pool in this block)."""
    if not install:
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        stop_all()  # also the stages of pipelines run in other threads (caef sweep --jobs N)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    _STOPPED.clear()
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_stage_process(cmd: Sequence[str], env: Mapping[str, str], lock: Any = None, log: Path | None = None) -> int:
    """Run ``cmd`` in a new process group and wait; on :class:`Interrupted` (or any error) stop the whole group
    first, then re-raise. ``lock`` (a :class:`~caef.run_lock.RunLock`) records the group while it runs; ``log``
    takes its output (stdout and stderr) instead of the terminal, for stages run side by side."""
    out = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = open(log, "ab")  # noqa: SIM115 -- closed below, once the process has its own copy
    try:
        with _LIVE_LOCK:  # checked and registered at once: stop_all either sees this process or refuses it
            if _STOPPED.is_set():
                raise Interrupted(signal.SIGTERM)
            process = subprocess.Popen(
                list(cmd), env=dict(env), start_new_session=True, preexec_fn=_die_with(os.getpid()),
                stdout=out, stderr=subprocess.STDOUT if out else None,
            )  # fmt: skip
            _LIVE.add(process)
    finally:
        if out is not None:
            out.close()
    if lock is not None:
        lock.note_stage(process.pid)
    try:
        return process.wait()
    except BaseException:
        stop_group(process)
        process.wait()  # reap it
        raise
    finally:
        with _LIVE_LOCK:
            _LIVE.discard(process)
        if lock is not None and process.poll() is not None:
            lock.note_stage(process.pid, running=False)


def stop_all() -> None:
    """Stop the process group of every stage this process is running (in any thread), and start no more."""
    with _LIVE_LOCK:
        _STOPPED.set()
        live = [p for p in _LIVE if p.poll() is None]
    for process in live:
        stop_group(process)


def _prctl() -> Any:
    """libc's ``prctl`` (Linux), resolved in the parent: the child must not import between fork and exec."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()
_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> Any:
    """A ``preexec_fn``: the stage gets SIGKILL when the pipeline process dies, even of SIGKILL, so a killed pipeline
    leaves no stage (in its own session, out of reach of a signal to the pipeline's group) writing into the run
    folder. Without ``prctl`` (not Linux) it does nothing, and the run lock names the stage still running."""

    def preexec() -> None:
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
            if os.getppid() != parent:  # the pipeline died before the death signal was armed
                os._exit(1)

    return preexec


def stop_group(process: subprocess.Popen, grace_s: float | None = None) -> None:
    """SIGTERM to the process group of ``process``, SIGKILL to what is left after ``grace_s`` seconds."""
    grace_s = STOP_GRACE_S if grace_s is None else grace_s
    with _signals_ignored():  # a second Ctrl-C must not cut the stopping short
        stopped = _stop(process, grace_s)
    if stopped:
        print(f"[caef pipeline] stopped the stage (process group {process.pid})", flush=True)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _stop(process: subprocess.Popen, grace_s: float) -> bool:
    """Signal the group and watch it (never ``process.wait``: another thread, or the frame this signal handler
    interrupted, may be waiting on the process and hold its wait lock); False if the group was already gone."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        if not _group_running(process.pid):
            return sig != signal.SIGTERM
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return sig != signal.SIGTERM
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _group_running(process.pid):
            time.sleep(0.05)
    return True


def _group_running(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies, waiting to be reaped, do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def resume_checkpoint(last: Path) -> Path | None:
    """The checkpoint a training stage resumes from: ``last`` if it loads, else the newest other readable
    checkpoint beside it (saying so), else None (the stage starts again)."""
    from caef.stage_graph import unreadable

    why = unreadable(last)
    if why is None:
        return last
    others = sorted((p for p in last.parent.glob("*.ckpt") if p != last), key=lambda p: p.stat().st_mtime)
    for other in reversed(others):
        if unreadable(other) is None:
            print(f"[caef pipeline] {last} is {why}: resuming from {other}", flush=True)
            return other
    if why != "missing":
        print(f"[caef pipeline] {last} is {why} and no other checkpoint is readable: the stage starts again")
    return None
