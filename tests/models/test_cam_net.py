"""CAMNet: PSA's classifier head dropout acts while training only; the reference configs' AffinityNet init."""

from __future__ import annotations

from pathlib import Path

import torch

from caef.models.cam_net import build_cam_net
from caef.pipeline import Pipeline, PipelineConfig

ROOT = Path(__file__).resolve().parents[2]
TINY = {"width": 0.0625, "freeze_bn": False}


def test_head_dropout_drops_feature_channels_in_training_only():
    torch.manual_seed(0)
    plain = build_cam_net("resnet38", 5, **TINY).eval()
    torch.manual_seed(0)
    dropped = build_cam_net("resnet38", 5, head_dropout=0.5, **TINY).eval()
    assert plain.state_dict().keys() == dropped.state_dict().keys()  # no parameters: checkpoints interchange
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(dropped(x), plain(x))  # eval: CAMs (and a frozen OC) unaffected
        dropped.head_dropout.train()  # the head's dropout alone in training mode
        torch.manual_seed(1)
        out = dropped(x)
        torch.manual_seed(1)
        expected = plain.classifier(torch.nn.functional.dropout2d(plain.backbone(x), 0.5, training=True))
    torch.testing.assert_close(out, expected)  # whole feature channels dropped before the 1x1 classifier
    assert not torch.allclose(out, plain(x))


def test_reference_affinity_net_starts_from_imagenet_and_the_demo_from_the_cgnet(tmp_path):
    for name, from_cgnet in (("voc_full", False), ("coco_full", False), ("demo", True)):
        config = PipelineConfig.load(ROOT / "experiments" / f"{name}.yaml")
        config.runs_root = str(tmp_path)
        argv = Pipeline(config).argv("affinity")
        init = [a for a in argv if a.startswith("--model.init_checkpoint=")]
        assert bool(init) is from_cgnet, (name, init)
        if from_cgnet:
            assert init[-1].endswith(str(Path("cgnet") / "last.ckpt"))
