"""``parallel_stages``: consecutive independent stages run side by side, each with its share of the CPU threads and
its own log, on one manifest; a failure or a signal in a group leaves every stage of it in a resumable state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caef import code_fingerprint
from caef.errors import CaefError
from caef.pipeline import Pipeline, PipelineConfig
from caef.pipeline_cli import format_summary
from caef.run_lock import RunLock
from caef.stage_schedule import stage_groups, thread_share, wall_seconds
from tests.reliability.fake_stage import fake_python
from tests.reliability.pipeline_fixtures import alive, experiment, manifest, sleeping_pipeline
from tests.reliability.reliability_helpers import EXPERIMENTS

ROOT = Path(__file__).resolve().parents[2]
TWO_INDEPENDENT = (
    f"{{classifier: {{config: {EXPERIMENTS / 'classifier/demo.yaml'}}}, "
    f"fully_supervised: {{config: {EXPERIMENTS / 'deeplab/demo.yaml'}}}}}"
)


def _pipeline(tmp_path: Path, data_root: Path, parallel: int, name: str = "side") -> Pipeline:
    config = PipelineConfig.load(experiment(tmp_path, data_root, TWO_INDEPENDENT, name))
    config.runs_root, config.parallel_stages = str(tmp_path / "runs"), parallel
    return Pipeline(config, python=fake_python(tmp_path))


def test_the_demo_runs_its_two_deeplabs_side_by_side_and_nothing_else():
    config = PipelineConfig.load(ROOT / "experiments/demo.yaml")
    pipeline = Pipeline(config)
    groups = stage_groups(pipeline.stages(), pipeline.needs, config.parallel_stages)
    assert config.parallel_stages == 2
    assert [g for g in groups if len(g) > 1] == [("deeplab", "fully_supervised")]
    assert [s for g in groups for s in g] == pipeline.stages()  # every stage once, in order
    assert all(len(g) == 1 for g in stage_groups(pipeline.stages(), pipeline.needs, 1))


def test_a_group_never_holds_a_stage_and_what_it_reads_and_respects_its_size():
    needs = {"a": (), "b": (), "c": ("a",), "d": (), "e": ()}.__getitem__
    assert stage_groups("abcde", needs, 2) == [("a", "b"), ("c", "d"), ("e",)]
    assert stage_groups("abcde", needs, 3) == [("a", "b"), ("c", "d", "e")]
    assert stage_groups("abcde", needs, 1) == [(s,) for s in "abcde"]
    assert wall_seconds([("a", "b"), ("c",)], {"a": 3.0, "b": 5.0, "c": 1.0}) == 6.0


def test_each_stage_of_a_group_gets_its_share_of_the_threads():
    assert thread_share(1, {"OMP_NUM_THREADS": "8"}) == {}  # alone: the environment is left as it is
    assert thread_share(2, {"OMP_NUM_THREADS": "8"})["OMP_NUM_THREADS"] == "4"
    assert thread_share(3, {"OMP_NUM_THREADS": "2"})["OMP_NUM_THREADS"] == "1"  # never zero
    cpus = len(os.sched_getaffinity(0))
    assert thread_share(2, {})["OMP_NUM_THREADS"] == str(max(1, cpus // 2))


def test_independent_stages_overlap_with_half_the_threads_each_and_their_own_logs(
    tmp_path, tiny_synth, monkeypatch, capsys
):
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("FAKE_TRACE", str(trace))
    monkeypatch.setenv("FAKE_SLEEP", "2")
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    summary = _pipeline(tmp_path, tiny_synth, parallel=2).run()
    runs = {r["stage"]: r for r in map(json.loads, trace.read_text().splitlines())}
    first, second = runs["classifier"], runs["fully_supervised"]
    assert max(first["start"], second["start"]) < min(first["end"], second["end"]), "the stages did not overlap"
    assert first["threads"] == second["threads"] == "2"
    run_dir = tmp_path / "runs" / "side"
    assert {s: e["status"] for s, e in manifest(run_dir)["stages"].items()} == {
        "classifier": "done",
        "fully_supervised": "done",
    }
    for stage in runs:
        assert f"fake stage {stage}: write" in (run_dir / "logs" / f"{stage}.log").read_text()
    seconds = summary["stage_seconds"]
    assert summary["total_seconds"] == max(seconds.values()) < sum(seconds.values())
    assert summary["stage_groups"] == [["classifier", "fully_supervised"]]
    assert "(side by side)" in format_summary(summary)
    out = capsys.readouterr().out
    assert "classifier, fully_supervised side by side (2 CPU thread(s) each" in out


def test_one_at_a_time_keeps_the_terminal_and_the_threads(tmp_path, tiny_synth, monkeypatch):
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("FAKE_TRACE", str(trace))
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    summary = _pipeline(tmp_path, tiny_synth, parallel=1).run()
    runs = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [r["threads"] for r in runs] == ["4", "4"]
    assert runs[0]["end"] <= runs[1]["start"]
    assert not (tmp_path / "runs" / "side" / "logs").exists()
    assert "stage_groups" not in summary or summary["stage_groups"] == []


def test_a_failing_stage_lets_its_partner_finish_shows_its_log_and_resumes(tmp_path, tiny_synth, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_STAGE_CLASSIFIER", "fail")
    with pytest.raises(CaefError, match="stage 'classifier' failed"):
        _pipeline(tmp_path, tiny_synth, parallel=2).run()
    run_dir = tmp_path / "runs" / "side"
    stages = manifest(run_dir)["stages"]
    assert stages["classifier"]["status"] == "failed"
    assert stages["fully_supervised"]["status"] == "done"
    assert "RuntimeError: the fake stage failed" in capsys.readouterr().err  # the log's end, on the terminal
    monkeypatch.delenv("FAKE_STAGE_CLASSIFIER")
    _pipeline(tmp_path, tiny_synth, parallel=2).run()
    out = capsys.readouterr().out
    assert "classifier (ordinary classifier): failed -- resuming" in out
    assert "fully_supervised: done, verified, unchanged -- skipped" in out


def test_a_stage_rerun_beside_an_unchanged_one_gets_every_thread(tmp_path, tiny_synth, monkeypatch, capsys):
    """Only the stages that run share the threads: a rerun that skips one stage of a pair gives the other all."""
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    monkeypatch.setenv("FAKE_STAGE_CLASSIFIER", "fail")
    with pytest.raises(CaefError):
        _pipeline(tmp_path, tiny_synth, parallel=2).run()
    monkeypatch.delenv("FAKE_STAGE_CLASSIFIER")
    monkeypatch.setenv("FAKE_TRACE", str(trace))
    capsys.readouterr()
    _pipeline(tmp_path, tiny_synth, parallel=2).run()
    runs = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [(r["stage"], r["threads"]) for r in runs] == [("classifier", "4")]
    out = capsys.readouterr().out
    assert "fully_supervised: done, verified, unchanged -- skipped" in out and "side by side" not in out


def test_when_both_fail_the_second_failure_is_reported_too(tmp_path, tiny_synth, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_STAGE", "fail")
    with pytest.raises(CaefError, match="stage 'classifier' failed"):
        _pipeline(tmp_path, tiny_synth, parallel=2).run()
    assert "also: stage 'fully_supervised' failed" in capsys.readouterr().err


def test_sigterm_stops_every_stage_of_the_group_and_both_resume(tmp_path, tiny_synth, monkeypatch, capsys):
    yaml = experiment(tmp_path, tiny_synth, TWO_INDEPENDENT, name="stopped")
    yaml.write_text(yaml.read_text() + "parallel_stages: 2\n")
    pids = tmp_path / "pids-{stage}.json"
    process = sleeping_pipeline(tmp_path, yaml, pids)
    files = [Path(str(pids).format(stage=s)) for s in ("classifier", "fully_supervised")]
    deadline = time.time() + 120
    while not all(f.exists() and f.read_text() for f in files) and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    run_dir = tmp_path / "runs" / "stopped"
    assert len(json.loads((run_dir / ".lock").read_text())["stage_pgids"]) == 2  # both groups recorded
    stage_pids = [pid for f in files for pid in json.loads(f.read_text())]
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        "caef: error: interrupted by SIGTERM during stage 'classifier, fully_supervised' (its processes were "
        "stopped); rerun the same command to resume"
    )
    deadline = time.time() + 10
    while any(alive(pid) for pid in stage_pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in stage_pids), "a stage process was left running"
    stages = manifest(run_dir)["stages"]
    assert {s: e["status"] for s, e in stages.items()} == {
        "classifier": "interrupted",
        "fully_supervised": "interrupted",
    }
    code = manifest(run_dir)["code"]
    monkeypatch.setattr(code_fingerprint, "code_identity", lambda: code)
    config = PipelineConfig.load(yaml)
    config.runs_root = str(tmp_path / "runs")
    capsys.readouterr()
    Pipeline(config).run(dry_run=True)
    out = capsys.readouterr().out
    assert out.count("interrupted -- resuming") == 2


def test_the_lock_refuses_a_folder_while_any_recorded_stage_lingers(tmp_path):
    run_dir = tmp_path / "run"
    stages = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)]
    stages.append(subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True))
    stages[1].wait()
    try:
        code = (
            f"from caef.run_lock import RunLock; import os; lock = RunLock({str(run_dir)!r}).acquire(); "
            f"lock.note_stage({stages[1].pid}); lock.note_stage({stages[0].pid}); "
            f"lock.note_stage({stages[1].pid}, running=False); os.kill(os.getpid(), 9)"
        )
        subprocess.run([sys.executable, "-c", code], env=os.environ | {"PYTHONPATH": str(ROOT)}, check=False)
        assert json.loads((run_dir / ".lock").read_text())["stage_pgids"] == [stages[0].pid]
        with pytest.raises(CaefError, match=f"still runs as process group {stages[0].pid}"):
            RunLock(run_dir).acquire()
    finally:
        stages[0].kill()
        stages[0].wait()
    RunLock(run_dir).acquire().release()


@pytest.mark.parametrize("value", [0, -1, "two", True])
def test_parallel_stages_must_be_a_whole_number_from_one(tmp_path, tiny_synth, value):
    yaml = experiment(tmp_path, tiny_synth, TWO_INDEPENDENT)
    yaml.write_text(yaml.read_text() + f"parallel_stages: {json.dumps(value)}\n")
    with pytest.raises(CaefError, match="parallel_stages"):
        PipelineConfig.load(yaml)
