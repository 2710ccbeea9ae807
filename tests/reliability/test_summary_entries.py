"""Case 8: a stage's manifest entry keeps every summary entry the stage wrote, also one a resumed stage rewrote
with its old value, so a stage-cache copy of it carries the whole summary."""

from __future__ import annotations

import json

from tests.reliability.pipeline_fixtures import classifier_pipeline, manifest


def test_a_resumed_stage_keeps_the_entries_it_rewrote_unchanged(tmp_path, tiny_synth, monkeypatch):
    written = {"oc_cam_miou": 51.5, "oc_cam_threshold": 0.3, "oc_cls_map": 70.0}
    monkeypatch.setenv("FAKE_SUMMARY", json.dumps(written))
    first = classifier_pipeline(tmp_path, tiny_synth)
    first.run_dir.mkdir(parents=True)
    # an earlier attempt of the stage (its process died) already wrote the threshold
    (first.run_dir / "summary.json").write_text(json.dumps({"oc_cam_threshold": 0.3}))
    first.run()
    assert manifest(first.run_dir)["stages"]["classifier"]["summary"] == written

    copy = classifier_pipeline(tmp_path, tiny_synth, name="copy")
    copy.run()
    entry = manifest(copy.run_dir)["stages"]["classifier"]
    assert entry["cached_from"].endswith("/t")
    summary = json.loads((copy.run_dir / "summary.json").read_text())
    assert {k: summary[k] for k in written} == written
