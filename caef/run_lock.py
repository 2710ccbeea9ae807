"""Locks that keep two processes out of the same results.

:class:`RunLock`: one ``caef pipeline`` per run folder, held for the pipeline's whole life. A second run on the
same folder stops at once, naming the holder (host, pid, start time, command). The lock is an ``flock`` on
``<run_dir>/.lock``: the kernel releases it when its holder dies, however it dies, so a dead run's lock is taken
over without anyone deleting a file. Where a file system has no ``flock`` (some network mounts), the holder
written in the file decides: a holder on this host whose pid is gone is taken over; any other holder stops the run.

:func:`file_lock`: a short exclusive lock around a read-modify-write of a shared file (``summary.json``,
``runs/stage_cache.json``), so points of ``caef sweep --jobs N`` and the stages of a run lose no entry.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from caef.errors import CaefError

LOCK_NAME = ".lock"
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class RunLock:
    """Exclusive ownership of a run folder; ``with RunLock(run_dir):`` or :meth:`acquire` / :meth:`release`.

    ``stage_pgids`` (:meth:`note_stage`) records the process groups of the stages being run (more than one when
    independent stages run side by side), so a second run that finds a dead pipeline whose stage still runs (the
    pipeline was killed with SIGKILL) refuses to start."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self._holder: dict[str, Any] = {}
        self._stages: list[int] = []
        self._write_lock = threading.Lock()  # stages run side by side note themselves from their own threads

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise CaefError(self._busy_message(read_holder(self.path))) from None
            if exc.errno not in _NO_FLOCK:
                os.close(fd)
                raise
            holder = read_holder(self.path)  # no flock here: the recorded holder decides
            if holder and holder_alive(holder):
                os.close(fd)
                raise CaefError(self._busy_message(holder)) from None
        previous = read_holder(self.path)
        same_host = previous.get("host") == socket.gethostname()
        stage = next((pgid for pgid in _stage_groups(previous) if same_host and _group_lingers(pgid)), None)
        if stage:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise CaefError(
                f"run folder {self.run_dir}: a stage of the run started {previous.get('started', '?')} (pid "
                f"{previous.get('pid')}, which is gone) still runs as process group {stage}; stop it "
                f"(kill -- -{stage}) or wait for it, then rerun"
            )
        self._fd = fd
        self._holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }
        self._write()
        return self

    def note_stage(self, pgid: int, running: bool = True) -> None:
        """Record that the stage of process group ``pgid`` runs (or, ``running=False``, has ended)."""
        with self._write_lock:
            if self._fd is None:
                return
            self._stages = [p for p in self._stages if p != pgid] + ([pgid] if running else [])
            self._holder = {k: v for k, v in self._holder.items() if k != "stage_pgids"}
            if self._stages:
                self._holder["stage_pgids"] = list(self._stages)
            self._write()

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _write(self) -> None:
        assert self._fd is not None
        data = (json.dumps(self._holder) + "\n").encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def _busy_message(self, holder: dict[str, Any]) -> str:
        who = (
            f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
            if holder
            else "another process"
        )
        return (
            f"run folder {self.run_dir} is in use by {who} ({self.path}); wait for that run to finish or stop it, "
            "or choose another --name"
        )

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_holder(path: str | Path) -> dict[str, Any]:
    """What the holder of a lock file wrote about itself (empty if nothing readable)."""
    try:
        data = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def holder_alive(holder: dict[str, Any]) -> bool:
    """False only when the holder is certainly gone: on this host and its pid no longer exists."""
    if holder.get("host") != socket.gethostname():
        return True  # another machine's process cannot be checked from here
    return _pid_alive(int(holder.get("pid") or 0))


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stage_groups(holder: dict[str, Any]) -> list[int]:
    """The stage process groups a lock file records (``stage_pgid``: one, as caef 0.3.0 wrote it)."""
    groups = holder.get("stage_pgids") or ([holder["stage_pgid"]] if holder.get("stage_pgid") else [])
    return [int(pgid) for pgid in groups]


def _group_lingers(pgid: int, wait_s: float = 10.0) -> bool:
    """Whether the process group of a dead pipeline's stage still runs after ``wait_s``: the stage is killed with
    its pipeline (``PR_SET_PDEATHSIG``), but it and its workers take a moment to go."""
    deadline = time.monotonic() + wait_s
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            return True
        time.sleep(0.05)
    return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(int(pgid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OSError):
        return True
    return True


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock for ``path`` (on ``.<name>.lock`` beside it) while the block runs; waits for the
    current holder. Without ``flock`` on the file system the block runs unlocked."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in _NO_FLOCK:
                raise
        yield
    finally:
        os.close(fd)  # closing releases the lock
