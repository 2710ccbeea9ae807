"""A stage's fingerprint covers the bytes of the weight files it loads from outside the run folder, so a pretrained
trunk trained again (or ImageNet weights replaced) reruns the stage instead of keeping what the old file gave."""

from __future__ import annotations

from caef.pipeline import Pipeline, PipelineConfig
from tests.reliability.pipeline_fixtures import experiment
from tests.reliability.reliability_helpers import EXPERIMENTS


def _fingerprint(tmp_path, tiny_synth, flags: list[str]) -> str:
    stages = f"{{classifier: {{config: {EXPERIMENTS / 'classifier/demo.yaml'}}}}}"
    config = PipelineConfig.load(experiment(tmp_path, tiny_synth, stages))
    config.runs_root = str(tmp_path / "runs")
    return Pipeline(config, {"classifier": flags}).fingerprint("classifier", {"stages": {}})


def test_new_bytes_in_a_pretrained_file_change_the_fingerprint(tmp_path, tiny_synth):
    weights = tmp_path / "trunk.ckpt"
    weights.write_bytes(b"first training")
    flags = [f"--model.pretrained={weights}"]
    first = _fingerprint(tmp_path, tiny_synth, flags)
    assert _fingerprint(tmp_path, tiny_synth, flags) == first  # stable
    weights.write_bytes(b"trained again")
    assert _fingerprint(tmp_path, tiny_synth, flags) != first
    weights.unlink()
    assert _fingerprint(tmp_path, tiny_synth, flags) not in (first,)  # missing is a state of its own


def test_weights_inside_the_run_folder_are_left_to_the_upstream_fingerprints(tmp_path, tiny_synth):
    inside = tmp_path / "runs" / "t" / "cgnet" / "last.ckpt"
    inside.parent.mkdir(parents=True)
    inside.write_bytes(b"one")
    flags = ["--model.pretrained={run}/cgnet/last.ckpt"]
    first = _fingerprint(tmp_path, tiny_synth, flags)
    inside.write_bytes(b"two")  # a rerun upstream stage changes its own fingerprint, which reaches this one
    assert _fingerprint(tmp_path, tiny_synth, flags) == first
