"""Each stage's CPU thread count is part of what its results say: on a CPU it moves them by about a point, so
summary.json, report.md and the manifest record the threads every stage computed with, and a stage copied from
another run (the stage cache) keeps the count of the run that computed it."""

from __future__ import annotations

import json

from caef.data.datamodule import open_source
from caef.report import write_report
from caef.stage_schedule import stage_threads
from tests.reliability.pipeline_fixtures import classifier_pipeline, manifest
from tests.reliability.test_side_by_side import _pipeline


def test_the_thread_count_is_omp_num_threads_else_every_usable_cpu():
    from caef.cpus import usable_cpus

    assert stage_threads({"OMP_NUM_THREADS": "3"}) == 3
    assert stage_threads({}) == stage_threads({"OMP_NUM_THREADS": "junk"}) == usable_cpus()


def test_side_by_side_stages_record_their_share_and_a_stage_alone_every_thread(tmp_path, tiny_synth, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    side = _pipeline(tmp_path, tiny_synth, parallel=2).run()
    assert side["stage_threads"] == {"classifier": 2, "fully_supervised": 2}
    (tmp_path / "alone").mkdir()  # its own runs root: nothing to copy from the side-by-side run
    alone = _pipeline(tmp_path / "alone", tiny_synth, parallel=1).run()
    assert alone["stage_threads"] == {"classifier": 4, "fully_supervised": 4}
    assert manifest(tmp_path / "alone" / "runs" / "side")["stages"]["classifier"]["threads"] == 4


def test_the_report_gives_each_stage_its_seconds_and_threads(tmp_path, tiny_synth):
    times = {"stage_seconds": {"classifier": 12.5, "crf": 3.0}, "stage_threads": {"classifier": 2, "crf": 1}}
    (tmp_path / "summary.json").write_text(json.dumps(times))
    report = write_report(tmp_path, open_source("synthetic", tiny_synth)).read_text()
    assert "| stage | seconds | CPU threads |" in report
    assert "| classifier | 12.5 | 2 |" in report and "| crf | 3.0 | 1 |" in report


def test_a_stage_copied_from_another_run_keeps_the_thread_count_it_was_computed_with(tmp_path, tiny_synth, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    classifier_pipeline(tmp_path, tiny_synth).run()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    copy = classifier_pipeline(tmp_path, tiny_synth, name="copy")
    summary = copy.run()
    assert manifest(copy.run_dir)["stages"]["classifier"]["cached_from"].endswith("/t")
    assert summary["stage_threads"] == {"classifier": 2}  # computed at two threads, not this run's one
    assert json.loads((copy.run_dir / "summary.json").read_text())["stage_threads"] == {"classifier": 2}
