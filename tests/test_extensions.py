"""Extension points: an out-of-tree CAM method (a CGNetModule subclass by class path) and an out-of-tree backbone
(by import path) run through `caef pipeline` with no edit to caef; the examples in examples/ are what runs."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from test_pipeline import ROOT, tiny_flags

from caef.data.datamodule import open_source
from caef.errors import CaefError
from caef.models.backbones import build_backbone
from caef.pipeline_cli import main as pipeline_main

EXAMPLES = ROOT / "examples"


@pytest.fixture
def examples_importable(monkeypatch):
    """The examples are importable here and in the stage processes the pipeline starts."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setenv("PYTHONPATH", f"{EXAMPLES}:{ROOT}")
    yield
    for name in ("my_backbone", "my_erasing"):
        sys.modules.pop(name, None)


def test_backbone_by_import_path_declares_its_stages(examples_importable):
    backbone = build_backbone("my_backbone:plain_cnn", width=0.25)
    assert type(backbone).__name__ == "PlainCNN" and backbone.num_stages == 6
    out = backbone.forward_stages(torch.zeros(1, 3, 32, 32), range(1, 7))
    assert [32 // out[d].shape[-1] for d in range(1, 7)] == [2, 4, 8, 8, 8, 8]
    with pytest.raises(CaefError, match="cannot import backbone 'my_backbone:missing'"):
        build_backbone("my_backbone:missing")
    with pytest.raises(CaefError, match="unknown backbone 'nope'.*import path"):
        build_backbone("nope")


def test_backbone_by_entry_point(examples_importable, monkeypatch):
    """A package registers a name in the caef.backbones group; the registry finds it without importing it first."""
    from importlib.metadata import EntryPoint

    from caef.models.backbones import available_backbones, registry

    installed = [EntryPoint(name="plain_cnn", value="my_backbone:plain_cnn", group=registry.ENTRY_POINT_GROUP)]

    def entry_points(group: str, name: str | None = None):
        return [ep for ep in installed if ep.group == group and name in (None, ep.name)]

    monkeypatch.setattr(registry, "entry_points", entry_points)
    assert "plain_cnn" in available_backbones() and "resnet38" in available_backbones()
    assert type(build_backbone("plain_cnn", width=0.25)).__name__ == "PlainCNN"


@pytest.mark.slow  # about a minute: classifier, CGNet and CAM export
def test_out_of_tree_cam_method_and_backbone_run_through_the_pipeline(
    examples_importable, tmp_path, tiny_synth, tiny_synth_config
):
    argv = [
        str(ROOT / "experiments/demo.yaml"), "--name=ext", f"--runs_root={tmp_path}", "--until=cams",
        *tiny_flags(tiny_synth, tiny_synth_config),
        "--classifier.model.backbone=my_backbone:plain_cnn", "--cgnet.model.backbone=my_backbone:plain_cnn",
        "--cgnet.model=my_erasing.ConstantWeightErasing", "--cgnet.model.erase_weight=0.7",
        "--cgnet.model.masking_depth=5",
    ]  # fmt: skip
    assert pipeline_main(argv) == 0
    run = tmp_path / "ext"
    checkpoint = torch.load(run / "cgnet" / "last.ckpt", map_location="cpu", weights_only=False)
    hparams = checkpoint["hyper_parameters"]
    assert hparams["_class_path"] == "my_erasing.ConstantWeightErasing" and hparams["erase_weight"] == 0.7
    assert hparams["backbone"] == "my_backbone:plain_cnn" and hparams["masking_depth"] == 5
    assert any(k.startswith("net.backbone.stages.5.") for k in checkpoint["state_dict"])
    cams = sorted((run / "cams" / "cgnet").glob("*.npz"))
    assert [p.stem for p in cams] == sorted(open_source("synthetic", tiny_synth).split_ids("train_aug"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["cgnet_backbone"] == "my_backbone:plain_cnn" and 0 <= summary["cgnet_cam_miou"] <= 100
