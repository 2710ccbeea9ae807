"""Class-specific adversarial erasing: target sampling, the mask, gradients, and every masking depth."""

import pytest
import torch

from caef.errors import CaefError
from caef.models.backbones import build_backbone
from caef.models.cam_net import CAMNet, build_cam_net
from caef.stages.cgnet import CGNetModule, erasing_mask, load_ordinary_classifier, sample_target_classes
from caef.stages.classifier import ClassifierModule

SMALL = {"resnet38": {"width": 0.0625}, "resnet50": {}, "vgg16": {}}


def save_classifier(tmp_path, backbone="resnet38", num_classes=4, **options):
    module = ClassifierModule(num_classes=num_classes, backbone=backbone, backbone_options=options or SMALL[backbone])
    path = tmp_path / f"oc_{backbone}.pt"
    torch.save(module.net.state_dict(), path)
    return module, path


def make_cgnet(tmp_path, masking_depth=0, oc_backbone="resnet38", num_classes=4, **kwargs):
    _, path = save_classifier(tmp_path, oc_backbone, num_classes)
    return CGNetModule(
        ordinary_classifier=str(path),
        num_classes=num_classes,
        backbone="resnet38",
        backbone_options={"width": 0.0625},
        ordinary_classifier_backbone=oc_backbone,
        ordinary_classifier_options=SMALL[oc_backbone],
        masking_depth=masking_depth,
        **kwargs,
    )


def test_target_is_uniform_among_present_classes():
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1]]).repeat(2000, 1)
    targets = sample_target_classes(labels, torch.Generator().manual_seed(0))
    first = targets[0::2]
    assert set(first.tolist()) == {0, 2} and abs((first == 0).float().mean() - 0.5) < 0.05
    assert set(targets[1::2].tolist()) == {3}
    with pytest.raises(ValueError, match="positive label"):
        sample_target_classes(torch.zeros(1, 4))


def test_mask_normalisation_batch_vs_image():
    cams = torch.zeros(2, 3, 4, 4)
    cams[0, 1] = 2.0
    cams[1, 2] = 0.5
    targets = torch.tensor([1, 2])
    batch = erasing_mask(cams, targets, (8, 8), "batch")
    image = erasing_mask(cams, targets, (8, 8), "image")
    assert batch.shape == (2, 1, 8, 8)
    assert batch[0].max() == pytest.approx(1.0, abs=1e-4) and batch[1].max() == pytest.approx(0.25, abs=1e-4)
    assert image[1].max() == pytest.approx(1.0, abs=1e-4)
    assert erasing_mask(-cams, targets, (8, 8)).max() == 0  # ReLU


def test_gradients_reach_the_cgnet_through_the_mask_and_never_the_oc(tmp_path):
    torch.manual_seed(0)
    module = make_cgnet(tmp_path)
    module.train()
    assert not module.ordinary_classifier.training
    images = torch.randn(2, 3, 32, 32)
    labels = torch.tensor([[1.0, 1, 0], [0, 1, 1]])
    cams = module.net(images)
    targets = sample_target_classes(labels)
    mask = erasing_mask(cams, targets, (32, 32))
    erased = module.net.logits(module.ordinary_classifier(images, erase_mask=mask))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(erased, labels.scatter(1, targets[:, None], 0.0))
    loss.backward()  # only the erasing term: any CGNet gradient must have come through the mask
    grads = [p.grad for p in module.net.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in module.ordinary_classifier.parameters())
    assert not any(p.requires_grad for p in module.ordinary_classifier.parameters())


def test_training_step_loss_and_oc_stays_frozen(tmp_path):
    torch.manual_seed(0)
    module = make_cgnet(tmp_path, erase_weight_init=0.3, erase_weight_slope=0.05)
    oc_before = {k: v.clone() for k, v in module.ordinary_classifier.state_dict().items()}
    module.train()
    batch = {"image": torch.randn(2, 3, 32, 32), "label": torch.tensor([[1.0, 0, 1], [0, 1, 0]])}
    module.log_dict = lambda *a, **k: None
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert module.erase_weight() == pytest.approx(0.3)
    for k, v in module.ordinary_classifier.state_dict().items():
        assert torch.equal(v, oc_before[k]), k  # BN running stats untouched: eval mode


def test_erasing_off_is_the_plain_classification_loss_without_running_the_oc(tmp_path):
    torch.manual_seed(0)
    module = make_cgnet(tmp_path, erasing=False)
    module.train()
    module.log = lambda *a, **k: None
    module.ordinary_classifier.forward = lambda *a, **k: pytest.fail("the control must not run the OC")
    batch = {"image": torch.randn(2, 3, 32, 32), "label": torch.tensor([[1.0, 0, 1], [0, 1, 0]])}
    torch.manual_seed(1)  # same dropout draws for both forwards
    loss = module.training_step(batch, 0)
    torch.manual_seed(1)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        module.net.logits(module.net(batch["image"])), batch["label"]
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert module.erase_weight() == 0.0


@pytest.mark.parametrize("oc_backbone", ["resnet38", "resnet50", "vgg16"])
def test_every_masking_depth_runs_for_every_backbone(tmp_path, oc_backbone):
    num_stages = build_backbone(oc_backbone, **SMALL[oc_backbone]).num_stages
    oc = build_cam_net(oc_backbone, 4, **SMALL[oc_backbone]).eval()
    images = torch.randn(1, 3, 32, 32)
    mask = torch.rand(1, 1, 32, 32, requires_grad=True)
    for depth in range(num_stages + 1):
        out = oc(images, erase_mask=mask, masking_depth=depth)
        assert out.shape == (1, 3, 4, 4)
        (grad,) = torch.autograd.grad(out.sum(), mask)
        assert grad.abs().sum() > 0, f"{oc_backbone} depth {depth}: mask has no effect"
    with pytest.raises(ValueError, match="masking_depth"):
        oc(images, erase_mask=mask, masking_depth=num_stages + 1)


def test_all_ones_mask_at_depth_zero_erases_the_image():
    oc = build_cam_net("resnet38", 3, width=0.0625).eval()
    images = torch.randn(1, 3, 16, 16)
    erased = oc(images, erase_mask=torch.ones(1, 1, 16, 16), masking_depth=0)
    torch.testing.assert_close(erased, oc(torch.zeros_like(images)))


def test_invalid_masking_depth_is_rejected_at_construction(tmp_path):
    with pytest.raises(ValueError, match="masking_depth=8"):
        make_cgnet(tmp_path, masking_depth=8)


def test_loading_the_oc_from_a_lightning_checkpoint(tmp_path):
    import lightning.pytorch as pl

    module = ClassifierModule(num_classes=4, backbone="resnet38", backbone_options={"width": 0.0625})
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(module)
    path = tmp_path / "oc.ckpt"
    trainer.save_checkpoint(path)
    oc = load_ordinary_classifier(path, num_classes=4)
    assert isinstance(oc, CAMNet)
    for (k, v), (k2, v2) in zip(oc.state_dict().items(), module.net.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    with pytest.raises(CaefError, match="3 foreground classes but the dataset has 5"):
        load_ordinary_classifier(path, num_classes=6)


def test_oc_errors_name_the_file(tmp_path):
    with pytest.raises(CaefError, match="not found: .*missing.ckpt"):
        load_ordinary_classifier(tmp_path / "missing.ckpt", 4)
    _, path = save_classifier(tmp_path)
    with pytest.raises(CaefError, match=f"{path.name} does not match .*shape mismatches .*width"):
        load_ordinary_classifier(path, 4, backbone="resnet38", backbone_options={"width": 0.125})
    with pytest.raises(CaefError, match="ordinary_classifier is not set"):
        CGNetModule(num_classes=4)
