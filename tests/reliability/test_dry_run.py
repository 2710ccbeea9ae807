"""Case 7: ``caef pipeline --dry_run`` writes nothing anywhere: no run folder, no manifest, no copy of a stage
another run finished (the stage cache is only read)."""

from __future__ import annotations

import json

import torch

from tests.reliability.pipeline_fixtures import classifier_pipeline


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def test_dry_run_writes_nothing_even_where_a_cached_stage_could_be_copied(tmp_path, tiny_synth, capsys):
    other = classifier_pipeline(tmp_path, tiny_synth, name="done_before")
    fingerprint = other.fingerprint("classifier", {"stages": {}})
    other_dir = other.run_dir
    (other_dir / "classifier").mkdir(parents=True)
    torch.save({"state_dict": {}}, other_dir / "classifier" / "last.ckpt")
    entry = {"status": "done", "fingerprint": fingerprint, "inputs": {}, "summary": {"oc_cam_miou": 50.0}}
    (other_dir / "manifest.json").write_text(json.dumps({"name": "done_before", "stages": {"classifier": entry}}))
    runs = other_dir.parent
    (runs / "stage_cache.json").write_text(json.dumps({fingerprint: "done_before"}))
    pipeline = classifier_pipeline(tmp_path, tiny_synth, name="fresh")
    before = _tree(tmp_path)
    assert pipeline.fingerprint("classifier", {"stages": {}}) == fingerprint  # it would be copied in a real run
    assert pipeline.run(dry_run=True) == {}
    assert "caef classifier fit" in capsys.readouterr().out
    assert not pipeline.run_dir.exists()
    assert _tree(tmp_path) == before
