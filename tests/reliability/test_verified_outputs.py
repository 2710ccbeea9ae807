"""Case 3 (and the resume side of case 9): "done" means every declared output is there and readable. A rerun of
the same command redoes exactly what was deleted or damaged; the stage cache copies only verified stages; a
training stage resumes from its last readable checkpoint, or starts again when there is none."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from caef.cam_files import save_cams
from caef.data.datamodule import open_source
from caef.pipeline import Pipeline, PipelineConfig
from caef.stage_graph import unreadable
from caef.stage_runner import resume_checkpoint
from tests.reliability.pipeline_fixtures import classifier_pipeline, experiment, manifest


@pytest.fixture()
def crf_run(tmp_path, tiny_synth):
    """A finished crf stage (real `caef crf`) on CAM files written for every image of train_aug."""
    source = open_source("synthetic", tiny_synth)
    cams = tmp_path / "cams"
    rng = np.random.default_rng(0)
    for image_id in source.split_ids("train_aug"):
        label = torch.from_numpy(source.label_of(image_id)).float()
        h, w = source.read_image(image_id).shape[:2]
        save_cams(cams / f"{image_id}.npz", torch.from_numpy(rng.random((len(label), h, w), dtype=np.float32)), label)

    def pipeline(name: str) -> Pipeline:
        path = experiment(tmp_path, tiny_synth, f"{{crf: {{args: [--workers=1, '--cam-dir={cams}']}}}}", name)
        config = PipelineConfig.load(path)
        config.runs_root = str(tmp_path / "runs")
        return Pipeline(config)

    first = pipeline("first")
    first.run()
    return first, pipeline, source.split_ids("train_aug")


def test_a_rerun_redoes_exactly_the_deleted_and_damaged_outputs(crf_run, capsys):
    pipeline, _, ids = crf_run
    seeds = pipeline.run_dir / "seeds"
    assert len(list((seeds / "low").glob("*.png"))) == len(ids) == len(list((seeds / "high").glob("*.png")))
    for image_id in ids[:3]:
        (seeds / "low" / f"{image_id}.png").unlink()
    (seeds / "high" / f"{ids[5]}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    kept = {p: p.stat().st_mtime_ns for p in seeds.rglob("*.png") if p.stem not in ids[:3] + [ids[5]]}
    capsys.readouterr()
    pipeline.run()
    out = capsys.readouterr().out
    assert "4 output(s) missing or unreadable" in out and "writing them again" in out
    assert all(unreadable(seeds / kind / f"{i}.png") is None for i in ids for kind in ("low", "high"))
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the others were not rewritten
    assert manifest(pipeline.run_dir)["stages"]["crf"]["status"] == "done"
    pipeline.run()
    assert "done, verified, unchanged -- skipped" in capsys.readouterr().out


def test_the_stage_cache_copies_only_verified_stages(crf_run, capsys):
    first, pipeline, ids = crf_run
    (first.run_dir / "seeds" / "low" / f"{ids[0]}.png").unlink()
    second = pipeline("second")
    capsys.readouterr()
    second.run()
    out = capsys.readouterr().out
    assert "copied" not in out and "not run yet" in out  # computed, not copied from the damaged run
    third = pipeline("third")
    third.run()
    assert "-- copied" in capsys.readouterr().out  # the second run is complete: copied
    assert len(list((third.run_dir / "seeds" / "low").glob("*.png"))) == len(ids)


def test_a_done_training_stage_with_an_unreadable_checkpoint_trains_again(tmp_path, tiny_synth, capsys):
    pipeline = classifier_pipeline(tmp_path, tiny_synth)
    pipeline.run()
    ckpt = pipeline.run_dir / "classifier" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # truncated (disk full during a copy)
    run_id = manifest(pipeline.run_dir)["stages"]["classifier"]["run_id"]
    capsys.readouterr()
    pipeline.run()
    out = capsys.readouterr().out
    assert "1 output(s) missing or unreadable" in out and "training it again" in out
    assert unreadable(ckpt) is None and manifest(pipeline.run_dir)["stages"]["classifier"]["run_id"] != run_id


def test_a_resume_skips_an_unreadable_last_checkpoint(tmp_path, tiny_synth, capsys):
    stage_dir = tmp_path / "classifier"
    stage_dir.mkdir()
    last, earlier = stage_dir / "last.ckpt", stage_dir / "epoch=1-step=10.ckpt"
    torch.save({"state_dict": {}}, earlier)
    last.write_bytes(b"PK\x03\x04 truncated")
    assert resume_checkpoint(last) == earlier
    assert "resuming from" in capsys.readouterr().out
    earlier.write_bytes(b"")
    assert resume_checkpoint(last) is None
    assert "starts again" in capsys.readouterr().out

    pipeline = classifier_pipeline(tmp_path, tiny_synth)
    pipeline.run()
    state = manifest(pipeline.run_dir)
    state["stages"]["classifier"]["status"] = "running"  # the process died while saving
    (pipeline.run_dir / "manifest.json").write_text(json.dumps(state))
    (pipeline.run_dir / "classifier" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    capsys.readouterr()
    pipeline.run(dry_run=True)
    out = capsys.readouterr().out
    assert "no readable checkpoint: starting the stage again" in out and "--ckpt_path" not in out
    pipeline.run()
    assert unreadable(pipeline.run_dir / "classifier" / "last.ckpt") is None
    assert manifest(pipeline.run_dir)["stages"]["classifier"]["status"] == "done"


def test_an_upstream_stage_outside_the_slice_is_verified_before_its_results_are_used(tmp_path, tiny_synth):
    from caef.errors import CaefError
    from tests.reliability.fake_stage import fake_python
    from tests.reliability.reliability_helpers import EXPERIMENTS

    stages = (
        f"{{classifier: {{config: {EXPERIMENTS / 'classifier/demo.yaml'}}}, "
        f"cgnet: {{config: {EXPERIMENTS / 'cgnet/demo.yaml'}}}}}"
    )
    config = PipelineConfig.load(experiment(tmp_path, tiny_synth, stages))
    config.runs_root = str(tmp_path / "runs")
    pipeline = Pipeline(config, python=fake_python(tmp_path))
    pipeline.run()
    ckpt = pipeline.run_dir / "classifier" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:50])
    with pytest.raises(CaefError) as info:
        Pipeline(config, python=fake_python(tmp_path)).run(start="cgnet")
    assert str(ckpt) in str(info.value) and "--from classifier" in str(info.value)
