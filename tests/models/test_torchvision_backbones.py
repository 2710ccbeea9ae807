"""torchvision backbones: stride-8 geometry, equality with torchvision's own modules, erasing, weights, freezing.

Random init and 32-64 px inputs keep this fast; nothing is downloaded (TORCH_HOME points at tmp_path).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.models import vgg as tv_vgg

from caef.errors import CaefError
from caef.models.backbones import registry
from caef.models.backbones import torchvision_backbones as tvb

ALL = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg16", "vgg16_bn"]
SLOW = {"resnet101", "resnet152"}
STRIDES = (2, 4, 8, 8, 8)
BASIC, BOTTLENECK, VGG = (64, 64, 128, 256, 512), (64, 256, 512, 1024, 2048), (64, 128, 256, 512, 512)
CHANNELS = {"resnet18": BASIC, "resnet34": BASIC, "vgg16": VGG, "vgg16_bn": VGG}
CHANNELS |= dict.fromkeys(("resnet50", "resnet101", "resnet152"), BOTTLENECK)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """32 px inputs gain nothing from threads, and OpenMP threads on a busy CI box slow them down 10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


def build(name, **kwargs):
    torch.manual_seed(0)
    return registry._REGISTRY[name](**kwargs).eval()


def close(a, b):
    scale = max(b.abs().max().item(), 1.0)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale)


def tv_trunk(net, x):
    """torchvision's ResNet modules applied in sequence (what forward does, minus avgpool/fc)."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def vgg_reference(features, x):
    """VGG features applied in sequence, skipping pools 4-5 and dilating block 5 by 2 with F.conv2d."""
    pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
    for i, module in enumerate(features):
        if i in pools[3:]:
            continue
        if i > pools[3] and isinstance(module, nn.Conv2d):
            x = F.conv2d(x, module.weight, module.bias, padding=2, dilation=2)
        else:
            x = module(x)
    return x


def tv_vgg_model(batch_norm=False):
    """torchvision's VGG-16 ``features`` and a small stand-in ``classifier``: the keys of its checkpoints,
    without initialising the real 100M-parameter classifier."""
    torch.manual_seed(1)
    net = nn.Module()
    net.features = tv_vgg.make_layers(tv_vgg.cfgs["D"], batch_norm=batch_norm)
    net.classifier = nn.Sequential(nn.Linear(4, 2))
    return net.eval()


def tv_state_shapes(name):
    """Key -> shape of torchvision's own model (built on the meta device: no memory, no init), heads dropped."""
    with torch.device("meta"):
        net = getattr(tv_vgg if name.startswith("vgg") else tv_resnet, name)()
    return {k: v.shape for k, v in net.state_dict().items() if not k.startswith(("fc.", "classifier."))}


@pytest.mark.parametrize("name", ALL)
def test_every_name_builds_with_unique_torchvision_keys(name):
    model = build(name)
    assert isinstance(model, tvb.TorchvisionBackbone)
    assert model.num_stages == 5 and model.stage_channels == CHANNELS[name]
    # The stages cover every parameter, yet add no state_dict keys of their own.
    stage_params = {id(p) for stage in model.stage_modules() for p in stage.parameters()}
    assert stage_params == {id(p) for p in model.parameters()}
    # Same keys and shapes as torchvision's model minus its head, so its checkpoints load as they are.
    assert {k: v.shape for k, v in model.state_dict().items()} == tv_state_shapes(name)


@pytest.mark.parametrize("name", _params(ALL))
def test_stage_shapes_and_output_stride(name):
    model = build(name)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        stages = model.forward_stages(x, range(1, 6))
    for depth, (channels, stride) in enumerate(zip(model.stage_channels, STRIDES), start=1):
        assert stages[depth].shape == (1, channels, 32 // stride, 32 // stride), depth


def test_resnet50_equals_torchvision_dilated_resnet():
    model = build("resnet50")
    net = tv_resnet.resnet50(replace_stride_with_dilation=[False, True, True]).eval()
    missing, unexpected = net.load_state_dict(model.state_dict(), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        close(model(x), tv_trunk(net, x))


def test_hand_dilated_resnet18_is_atrous_version_of_stride32_torchvision():
    """Sampled every 4 pixels, the stride-8 output is exactly torchvision's undilated stride-32 output."""
    model = build("resnet18")
    net = tv_resnet.resnet18().eval()
    net.load_state_dict(model.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        dense, coarse = model(x), tv_trunk(net, x)
    assert coarse.shape[-2:] == (2, 2) and dense.shape[-2:] == (8, 8)
    close(dense[..., ::4, ::4], coarse)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_vgg_equals_torchvision_features_without_pools_4_5(batch_norm):
    model = build("vgg16_bn" if batch_norm else "vgg16")
    reference = tv_vgg_model(batch_norm)
    reference.load_state_dict(model.state_dict(), strict=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        close(model(x), vgg_reference(reference.features, x))


@pytest.mark.parametrize("name", _params(ALL))
def test_all_ones_mask_zeroes_exactly_the_chosen_depth(name):
    """Erasing runs at every depth 0..num_stages and zeroes that stage's output (seen as the next stage's input)."""
    model = build(name)
    x, ones = torch.randn(1, 3, 32, 32), torch.ones(1, 1, 32, 32)
    seen: dict[int, torch.Tensor] = {}
    handles = [
        stage.register_forward_pre_hook(lambda _m, args, d=d: seen.__setitem__(d, args[0].clone()))
        for d, stage in enumerate(model.stage_modules())  # the input of stage d+1 is the output at depth d
    ]
    with torch.no_grad():
        for depth in range(model.num_stages + 1):
            out = model(x, ones, depth)
            assert out.shape == (1, model.out_channels, 4, 4)
            assert not (out if depth == model.num_stages else seen[depth]).any(), depth
            if depth > 0:
                assert seen[depth - 1].any(), depth  # the stages before the chosen depth are left alone
    for handle in handles:
        handle.remove()
    for bad in (-1, model.num_stages + 1):
        with pytest.raises(ValueError, match="masking_depth"):
            model(x, ones, bad)


@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
def test_all_zero_mask_changes_nothing(name):
    model = build(name)
    x, zeros = torch.randn(1, 3, 32, 32), torch.zeros(1, 1, 32, 32)
    with torch.no_grad():
        plain = model(x)
        for depth in range(model.num_stages + 1):
            torch.testing.assert_close(model(x, zeros, depth), plain, rtol=0, atol=0)


def test_deepcopy_keeps_stages_pointing_at_own_modules():
    model = build("resnet18")
    clone = copy.deepcopy(model)
    assert clone.stage_modules()[0][0] is clone.conv1 is not model.conv1
    assert clone.stage_modules()[4] is clone.layer4
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), model(x))


# -- weights -------------------------------------------------------------------------------------------------


def test_torchvision_resnet_state_dict_loads_from_path(tmp_path):
    torch.manual_seed(1)
    net = tv_resnet.resnet18().eval()
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)
    model = build("resnet18", pretrained=str(path))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, net.state_dict()[key])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        close(model(x)[..., ::4, ::4], tv_trunk(net, x))


def test_torchvision_vgg_state_dict_loads_from_path(tmp_path):
    reference = tv_vgg_model()
    path = tmp_path / "vgg16.pth"
    torch.save(reference.state_dict(), path)
    model = build("vgg16", pretrained=str(path))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        close(model(x), vgg_reference(reference.features, x))


def test_old_checkpoint_without_num_batches_tracked_loads(tmp_path):
    state = {k: v for k, v in tv_resnet.resnet18().state_dict().items() if "num_batches_tracked" not in k}
    torch.save(state, tmp_path / "old.pth")
    build("resnet18", pretrained=str(tmp_path / "old.pth"))


def _bad_state(kind):
    state = tv_resnet.resnet18().state_dict()
    if kind == "missing":
        del state["layer4.1.bn2.weight"]
        return state, "layer4.1.bn2.weight"
    if kind == "unexpected":
        state["extra.weight"] = torch.zeros(1)
        return state, "extra.weight"
    return tv_resnet.resnet50().state_dict(), "layer1.0.conv1.weight"  # first key whose shape differs


@pytest.mark.parametrize("kind", ["missing", "unexpected", "shape"])
def test_mismatched_state_dict_names_file_and_key(tmp_path, kind):
    state, key = _bad_state(kind)
    path = tmp_path / f"{kind}.pth"
    torch.save(state, path)
    with pytest.raises(CaefError, match=key.replace(".", r"\.")) as info:
        build("resnet18", pretrained=str(path))
    assert str(path) in str(info.value)


def test_unreadable_or_absent_file_names_the_file(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    for path in (garbage, tmp_path / "absent.pth"):
        with pytest.raises(CaefError) as info:
            build("resnet18", pretrained=str(path))
        assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "name, pretrained, filename",
    [
        ("resnet18", "imagenet", "resnet18-f37072fd.pth"),
        ("resnet50", "imagenet", "resnet50-0676ba61.pth"),
        ("resnet50", "IMAGENET1K_V2", "resnet50-11ad3fa6.pth"),
        ("vgg16", "imagenet", "vgg16-397923af.pth"),
    ],
)
def test_imagenet_without_cache_says_which_file_to_place_where(tmp_path, monkeypatch, name, pretrained, filename):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(CaefError) as info:
        registry._REGISTRY[name](pretrained=pretrained)
    message = str(info.value)
    assert filename in message and str(tmp_path / "hub" / "checkpoints" / filename) in message


def test_imagenet_loads_from_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    net = tv_resnet.resnet18()
    torch.save(net.state_dict(), cache / "resnet18-f37072fd.pth")
    model = build("resnet18", pretrained="imagenet")
    torch.testing.assert_close(model.conv1.weight, net.conv1.weight)


# -- freezing and dropout ------------------------------------------------------------------------------------


def _bn(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_resnet_default_freezing_stem_and_batchnorm():
    model = build("resnet18").train()
    assert model.training and not model.conv1.weight.requires_grad
    assert all(not m.training and not any(p.requires_grad for p in m.parameters()) for m in _bn(model))
    assert model.layer1[0].conv1.weight.requires_grad and model.layer1[0].conv1.training
    weights, biases = model.trainable_parameters()
    assert weights and not biases  # ResNet convs have no bias, BN is frozen


def test_frozen_stages_and_unfrozen_batchnorm():
    model = build("resnet18", frozen_stages=3, freeze_bn=False).train()
    assert not model.layer2[0].conv1.weight.requires_grad and not model.layer1[1].bn2.weight.requires_grad
    assert model.layer3[0].conv1.weight.requires_grad and model.layer3[0].bn1.weight.requires_grad
    assert all(m.training for m in _bn(model))


def test_vgg_defaults_train_everything():
    model = build("vgg16").train()
    assert model.frozen_stages == 0 and all(p.requires_grad for p in model.parameters())
    assert all(not m.training for m in _bn(build("vgg16_bn").train()))


@pytest.mark.parametrize("kwargs", [{"frozen_stages": 6}, {"frozen_stages": -1}, {"dropout": 1.0}])
def test_bad_settings_raise(kwargs):
    with pytest.raises(CaefError):
        build("resnet18", **kwargs)


def test_dropout_only_in_train_mode():
    plain, dropped = build("resnet18"), build("resnet18", dropout=0.5)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        reference = plain(x)
        torch.testing.assert_close(dropped.eval()(x), reference)
        out = dropped.train()(x)
    kept = out.flatten(2).abs().sum(-1) != 0  # (B, C): whole channels are dropped, the others scaled by 2
    assert (~kept).sum() > (reference.flatten(2).abs().sum(-1) == 0).sum()
    torch.testing.assert_close(out[kept], 2 * reference[kept])
