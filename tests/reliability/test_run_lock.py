"""Case 1: one pipeline per run folder. A second run on a folder in use stops at once naming the holder; a dead
holder's lock is taken over; shared files (summary.json, stage_cache.json) lose no update under concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caef.cli import main as cli_main
from caef.errors import CaefError
from caef.io import update_json
from caef.run_lock import RunLock, read_holder
from tests.reliability.pipeline_fixtures import experiment, sleeping_pipeline

ROOT = Path(__file__).resolve().parents[2]


def _holding_pipeline(tmp_path: Path, yaml: Path, pids: Path) -> subprocess.Popen:
    """A real `caef pipeline` process whose (fake) crf stage sleeps: it holds the run folder."""
    process = sleeping_pipeline(tmp_path, yaml, pids)
    deadline = time.time() + 120
    while not pids.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert pids.exists(), process.stderr.read() if process.poll() is not None else "stage did not start"
    return process


def test_a_second_pipeline_on_a_folder_in_use_stops_at_once_naming_the_holder(tmp_path, tiny_synth, capsys):
    yaml = experiment(tmp_path, tiny_synth, "{crf: {}}", name="busy")
    first = _holding_pipeline(tmp_path, yaml, tmp_path / "pids.json")
    try:
        manifest_before = (tmp_path / "runs" / "busy" / "manifest.json").read_bytes()
        code = cli_main(["pipeline", str(yaml), f"--runs_root={tmp_path / 'runs'}", "--seed=7"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err, err
        assert f"pid {first.pid} on {socket.gethostname()}" in err and "in use" in err and "--name" in err
        # the second run changed nothing in the folder
        assert (tmp_path / "runs" / "busy" / "manifest.json").read_bytes() == manifest_before
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)


def test_the_lock_of_a_dead_run_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    code = f"from caef.run_lock import RunLock; import os; RunLock({str(run_dir)!r}).acquire(); os.kill(os.getpid(), 9)"
    dead = subprocess.run([sys.executable, "-c", code], env=os.environ | {"PYTHONPATH": str(ROOT)}, check=False)
    assert dead.returncode == -signal.SIGKILL
    assert read_holder(run_dir / ".lock")["pid"] != os.getpid()  # the dead holder's record is still there
    with RunLock(run_dir):
        assert read_holder(run_dir / ".lock")["pid"] == os.getpid()
        with pytest.raises(CaefError, match=f"in use by pid {os.getpid()}"):
            RunLock(run_dir).acquire()
    RunLock(run_dir).acquire().release()  # released on exit


def test_without_flock_the_recorded_holder_decides(tmp_path, monkeypatch):
    """On a file system without flock (ENOLCK), a live holder on this host blocks, a dead one is taken over."""
    import errno
    import fcntl

    def no_flock(fd, op):
        if op & fcntl.LOCK_UN:
            return
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder = {"host": socket.gethostname(), "pid": sleeper.pid, "started": "earlier"}
        (run_dir / ".lock").write_text(json.dumps(holder))
        with pytest.raises(CaefError, match=f"pid {sleeper.pid}"):
            RunLock(run_dir).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    with RunLock(run_dir):  # the holder is gone now
        assert read_holder(run_dir / ".lock")["pid"] == os.getpid()


def _merge(args: tuple[str, int]) -> None:
    path, worker = args
    for i in range(25):
        update_json(path, {f"w{worker}-{i}": i})


def test_concurrent_summary_updates_lose_no_entry(tmp_path):
    path = tmp_path / "summary.json"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_merge, [(str(path), w) for w in range(4)])
    assert len(json.loads(path.read_text())) == 100


def test_a_stage_left_running_by_a_killed_pipeline_keeps_the_folder_closed(tmp_path):
    """A pipeline SIGKILLed mid-stage leaves the stage's process group running (a group of its own): a new run must
    not start a second trainer in the same folder."""
    run_dir = tmp_path / "run"
    stage = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        code = (
            f"from caef.run_lock import RunLock; import os; lock = RunLock({str(run_dir)!r}).acquire(); "
            f"lock.note_stage({stage.pid}); os.kill(os.getpid(), 9)"
        )
        subprocess.run([sys.executable, "-c", code], env=os.environ | {"PYTHONPATH": str(ROOT)}, check=False)
        with pytest.raises(CaefError, match=f"still runs as process group {stage.pid}"):
            RunLock(run_dir).acquire()
    finally:
        stage.kill()
        stage.wait()
    RunLock(run_dir).acquire().release()  # the stage is gone: the folder is free
