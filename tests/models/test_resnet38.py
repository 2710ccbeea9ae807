"""ResNet-38 backbone: PSA topology and names, freezing, erasing depths, MXNet/PSA weight loading."""

from __future__ import annotations

import copy
import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import resnet38_state_to_mxnet, save_mxnet_params
from torch import nn

from caef.errors import CaefError
from caef.models.backbones.mxnet_params import convert_mxnet_to_resnet38, load_mxnet_params
from caef.models.backbones.resnet38 import ResNet38, convert_reference_state_dict

WIDTH = 0.0625  # channels 4, 8, 16, 32, 64, 128, 256


def small_model(**kwargs) -> ResNet38:
    torch.manual_seed(kwargs.pop("seed", 0))
    return ResNet38(width=kwargs.pop("width", WIDTH), **kwargs)


def randomize_batchnorm(model: nn.Module, seed: int = 1) -> None:
    """Non-trivial BN statistics, so loading tests would notice a swapped mean/var or weight/bias."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)


def psa_trunk_keys() -> set[str]:
    """PSA's resnet38d.Net parameter/buffer names, written out independently of the implementation."""
    bn = ("weight", "bias", "running_mean", "running_var")
    keys = {"conv1a.weight"} | {f"bn7.{p}" for p in bn}
    blocks = ["b2", "b2_1", "b2_2", "b3", "b3_1", "b3_2", "b4"] + [f"b4_{i}" for i in range(1, 6)]
    blocks += ["b5", "b5_1", "b5_2"]
    for block in blocks:
        keys |= {f"{block}.conv_branch2a.weight", f"{block}.conv_branch2b1.weight"}
        keys |= {f"{block}.{layer}.{p}" for layer in ("bn_branch2a", "bn_branch2b1") for p in bn}
    for block in ("b2", "b3", "b4", "b5", "b6", "b7"):
        keys.add(f"{block}.conv_branch1.weight")
    for block in ("b6", "b7"):
        keys |= {f"{block}.conv_branch2{suffix}.weight" for suffix in ("a", "b1", "b2")}
        keys |= {f"{block}.{layer}.{p}" for layer in ("bn_branch2a", "bn_branch2b1", "bn_branch2b2") for p in bn}
    return keys


# -- topology -------------------------------------------------------------------------------------------
def test_stage_shapes_channels_and_output_stride_8():
    model = small_model().eval()
    assert model.stage_channels == (4, 8, 16, 32, 64, 128, 256)
    assert model.num_stages == 7 and model.out_channels == 256
    outputs = model.forward_stages(torch.randn(2, 3, 64, 48), range(1, 8))
    sizes = [(64, 48), (32, 24), (16, 12), (8, 6), (8, 6), (8, 6), (8, 6)]
    for depth, (channels, size) in enumerate(zip(model.stage_channels, sizes), start=1):
        assert outputs[depth].shape == (2, channels, *size)
    assert (outputs[7] >= 0).all()  # the trunk ends with bn7 + ReLU


def test_full_width_matches_psa_shapes():
    with torch.device("meta"):
        model = ResNet38()
    assert model.stage_channels == (64, 128, 256, 512, 1024, 2048, 4096)
    state = model.state_dict()
    assert state["conv1a.weight"].shape == (64, 3, 3, 3)
    assert state["b5.conv_branch2a.weight"].shape == (512, 512, 3, 3)
    assert state["b5.conv_branch2b1.weight"].shape == (1024, 512, 3, 3)
    assert state["b6.conv_branch2a.weight"].shape == (512, 1024, 1, 1)
    assert state["b6.conv_branch2b1.weight"].shape == (1024, 512, 3, 3)
    assert state["b7.conv_branch2b2.weight"].shape == (4096, 2048, 1, 1)
    assert state["bn7.running_var"].shape == (4096,)


def test_dilations_and_strides_follow_psa():
    model = small_model()
    assert model.b2.conv_branch2a.stride == (2, 2) and model.b4.conv_branch1.stride == (2, 2)
    assert model.b5.conv_branch2a.dilation == (1, 1) and model.b5.conv_branch2b1.dilation == (2, 2)
    assert model.b5_2.conv_branch2a.dilation == (2, 2)
    for block in (model.b6, model.b7):
        assert block.conv_branch2b1.dilation == (4, 4) and block.conv_branch2b1.padding == (4, 4)


def test_state_dict_keys_are_exactly_psa_names():
    model = small_model()
    keys = [key for key in model.state_dict() if not key.endswith("num_batches_tracked")]
    assert len(keys) == len(set(keys))
    assert set(keys) == psa_trunk_keys()
    assert "b4_5.conv_branch2b1.weight" in keys and "bn7.running_var" in keys
    assert len(list(model.parameters())) == len(dict(model.named_parameters()))


def test_stage_one_equals_functional_conv1a():
    model = small_model().eval()
    image = torch.randn(1, 3, 40, 40)
    (stage1,) = model.forward_stages(image, [1]).values()
    torch.testing.assert_close(stage1, F.conv2d(image, model.conv1a.weight, padding=1))


def _bn_relu(x, bn):
    return F.relu(F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps))


def test_blocks_equal_functional_pre_activation_recomputation():
    model = small_model()
    randomize_batchnorm(model)
    model.eval()
    x = torch.randn(1, model.stage_channels[0], 16, 16)
    block = model.b2  # projection shortcut on the BN-ReLU'd input, stride 2
    act = _bn_relu(x, block.bn_branch2a)
    mid = F.conv2d(act, block.conv_branch2a.weight, stride=2, padding=1)
    expected = F.conv2d(act, block.conv_branch1.weight, stride=2) + F.conv2d(
        _bn_relu(mid, block.bn_branch2b1), block.conv_branch2b1.weight, padding=1
    )
    torch.testing.assert_close(block(x), expected)
    y = torch.randn(1, model.stage_channels[1], 8, 8)
    block = model.b2_1  # identity shortcut
    mid = F.conv2d(_bn_relu(y, block.bn_branch2a), block.conv_branch2a.weight, padding=1)
    expected = y + F.conv2d(_bn_relu(mid, block.bn_branch2b1), block.conv_branch2b1.weight, padding=1)
    torch.testing.assert_close(block(y), expected)


def test_deepcopy_keeps_stages_tied_to_named_blocks():
    clone = copy.deepcopy(small_model())
    assert clone.stage_modules()[0][0] is clone.conv1a
    assert clone.stage_modules()[6][1] is clone.bn7


# -- freezing, dropout, erasing -----------------------------------------------------------------------
def test_frozen_stages_and_batchnorm():
    model = small_model().train()
    assert not model.conv1a.weight.requires_grad
    for name in ("b2", "b2_1", "b2_2"):
        assert not any(p.requires_grad for p in getattr(model, name).parameters())
    assert model.b3.conv_branch2a.weight.requires_grad and model.b7.conv_branch2b2.weight.requires_grad
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert not module.training
            assert not module.weight.requires_grad and not module.bias.requires_grad
    assert model.b6.dropout_2b1.training
    weights, biases = model.trainable_parameters()
    assert weights and not biases  # every conv is bias-free and BN is frozen


def test_unfrozen_variant_trains_everything():
    model = small_model(frozen_stages=0, freeze_bn=False).train()
    assert all(p.requires_grad for p in model.parameters())
    assert model.bn7.training


def test_dropout_only_in_train_mode():
    model = small_model(dropout=(0.5, 0.5))
    assert model.b6.dropout_2b1.p == 0.5 and model.b7.dropout_2b2.p == 0.5
    image = torch.randn(1, 3, 32, 32)
    model.train()
    assert not torch.equal(model(image), model(image))
    model.eval()
    torch.testing.assert_close(model(image), model(image), rtol=0, atol=0)
    assert small_model().b6.dropout_2b1.p == 0.3 and small_model().b7.dropout_2b1.p == 0.5


@pytest.mark.parametrize("depth", range(8))
def test_erasing_runs_at_every_masking_depth(depth):
    model = small_model().eval()
    image = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 1, 32, 32)
    mask[..., :16, :] = 1.0
    erased = model(image, erase_mask=mask, masking_depth=depth)
    assert erased.shape == (2, 256, 4, 4)
    assert not torch.allclose(erased, model(image))


def test_masking_depth_8_is_rejected():
    with pytest.raises(ValueError, match="masking_depth=8"):
        small_model()(torch.randn(1, 3, 32, 32), erase_mask=torch.zeros(1, 1, 32, 32), masking_depth=8)


def test_registry_builds_resnet38_when_all_builtin_backbones_exist():
    if importlib.util.find_spec("caef.models.backbones.torchvision_backbones") is None:
        pytest.skip("torchvision_backbones not written yet")
    from caef.models.backbones import build_backbone

    assert isinstance(build_backbone("resnet38", width=WIDTH), ResNet38)


# -- MXNet .params format -----------------------------------------------------------------------------
ALL_DTYPES = ["float32", "float64", "float16", "uint8", "int32", "int8", "int64", "bool"]


def test_mxnet_file_round_trips_byte_exactly(tmp_path: Path):
    rng = np.random.default_rng(0)
    arrays = {f"arg:x_{name}": (rng.standard_normal((2, 3, 4)) * 50).astype(name) for name in ALL_DTYPES}
    arrays["aux:vector"] = rng.standard_normal(5).astype(np.float32)
    first, second = tmp_path / "a.params", tmp_path / "b.params"
    save_mxnet_params(first, arrays)
    loaded = load_mxnet_params(first)
    assert list(loaded) == list(arrays)
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape
        np.testing.assert_array_equal(loaded[name], array)
    save_mxnet_params(second, loaded)
    assert first.read_bytes() == second.read_bytes()


def _v2_float32(shape, values) -> bytes:
    header = struct.pack("<Iii", 0xF993FAC9, 0, len(shape)) + struct.pack(f"<{len(shape)}q", *shape)
    return header + struct.pack("<iii", 1, 0, 0) + struct.pack(f"<{len(values)}f", *values)


def test_hand_assembled_file_parses_to_expected_values(tmp_path: Path):
    """Bytes laid out from MXNet's NDArray::Save, independent of save_mxnet_params."""
    first = _v2_float32((2, 2), [1.0, -2.0, 3.5, 0.25])
    # legacy (pre-V1) array: the first word is ndim, uint32 dims, then cpu(0) context and int32 type flag 4
    second = struct.pack("<III", 2, 1, 3) + struct.pack("<iii", 1, 0, 4) + struct.pack("<3i", 7, -8, 9)
    names = [b"arg:w", b"aux:stats"]
    blob = struct.pack("<QQQ", 0x112, 0, 2) + first + second + struct.pack("<Q", 2)
    blob += b"".join(struct.pack("<Q", len(name)) + name for name in names)
    path = tmp_path / "hand.params"
    path.write_bytes(blob)
    loaded = load_mxnet_params(path)
    assert list(loaded) == ["arg:w", "aux:stats"]
    np.testing.assert_array_equal(loaded["arg:w"], np.array([[1.0, -2.0], [3.5, 0.25]], np.float32))
    assert loaded["aux:stats"].dtype == np.int32
    assert loaded["aux:stats"].shape == (1, 3)
    np.testing.assert_array_equal(loaded["aux:stats"], [[7, -8, 9]])


def test_v1_and_v3_headers_and_unnamed_lists(tmp_path: Path):
    v1 = struct.pack("<II", 0xF993FAC8, 1) + struct.pack("<q", 2) + struct.pack("<iii", 1, 0, 1)
    v1 += struct.pack("<2d", 0.5, 1.5)
    v3_scalar = struct.pack("<Iii", 0xF993FACA, 0, 0) + struct.pack("<iii", 2, 0, 6) + struct.pack("<q", -3)
    path = tmp_path / "mixed.params"
    path.write_bytes(struct.pack("<QQQ", 0x112, 0, 2) + v1 + v3_scalar + struct.pack("<Q", 0))
    loaded = load_mxnet_params(path)
    np.testing.assert_array_equal(loaded["0"], np.array([0.5, 1.5]))
    assert loaded["1"].shape == () and loaded["1"] == -3


@pytest.mark.parametrize("cut", [4, 20, 40, -3])
def test_truncated_file_names_file_and_offset(tmp_path: Path, cut: int):
    path = tmp_path / "cut.params"
    save_mxnet_params(path, {"arg:conv1a_weight": np.ones((4, 3, 3, 3), np.float32)})
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(CaefError, match=r"cut\.params: truncated.*offset \d+"):
        load_mxnet_params(path)


def test_garbage_and_sparse_files_are_rejected(tmp_path: Path):
    path = tmp_path / "junk.params"
    path.write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(CaefError, match=r"junk\.params: bad NDArray list magic.*offset 0"):
        load_mxnet_params(path)
    sparse = struct.pack("<QQQ", 0x112, 0, 1) + struct.pack("<Ii", 0xF993FAC9, 1) + bytes(40)
    path.write_bytes(sparse)
    with pytest.raises(CaefError, match="sparse storage type 1"):
        load_mxnet_params(path)


def test_ademxapp_names_map_to_psa_names():
    one = np.zeros(1, np.float32)
    names = {
        "arg:conv1a_weight": "conv1a.weight",
        "arg:res2a_branch1_weight": "b2.conv_branch1.weight",
        "arg:res4b3_branch2a_weight": "b4_3.conv_branch2a.weight",
        "aux:bn2a_branch2a_moving_mean": "b2.bn_branch2a.running_mean",
        "aux:bn5b2_branch2b1_moving_var": "b5_2.bn_branch2b1.running_var",
        "arg:bn6a_branch2b2_gamma": "b6.bn_branch2b2.weight",
        "arg:res7a_branch2b2_weight": "b7.conv_branch2b2.weight",
        "arg:bn7_beta": "bn7.bias",
        "aux:bn7_moving_var": "bn7.running_var",
    }
    converted = convert_mxnet_to_resnet38({**{k: one for k in names}, "arg:linear1000_weight": one})
    assert set(converted) == set(names.values())
    assert resnet38_state_to_mxnet({v: torch.zeros(1) for v in names.values()}).keys() == names.keys()


def test_pretrained_params_file_reproduces_directly_loaded_model(tmp_path: Path):
    source = small_model(seed=3)
    randomize_batchnorm(source)
    arrays = resnet38_state_to_mxnet(source.state_dict())
    arrays["arg:linear1000_weight"] = np.ones((10, 256), np.float32)
    arrays["arg:linear1000_bias"] = np.zeros(10, np.float32)
    path = tmp_path / "ilsvrc-cls_rna-a1_cls1000_ep-0001.params"
    save_mxnet_params(path, arrays)

    loaded = small_model(seed=5, pretrained=str(path))
    image = torch.randn(2, 3, 48, 48)
    torch.testing.assert_close(loaded.eval()(image), source.eval()(image), rtol=0, atol=0)
    assert not loaded.conv1a.weight.requires_grad and not loaded.bn7.weight.requires_grad


# -- PSA / OC-CSE torch checkpoints ---------------------------------------------------------------------
def psa_classifier_state(model: ResNet38) -> dict[str, torch.Tensor]:
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state["module.fc8.weight"] = torch.randn(20, model.out_channels, 1, 1)
    return state


def test_psa_state_dict_converts_to_cam_network_keys():
    model = small_model()
    converted = convert_reference_state_dict({**psa_classifier_state(model), "module.unused.weight": torch.ones(1)})
    assert converted["classifier.weight"].shape == (20, 256, 1, 1)
    assert "backbone.b4_5.conv_branch2b1.weight" in converted and "backbone.bn7.running_var" in converted
    assert set(converted) == {"classifier.weight"} | {f"backbone.{k}" for k in model.state_dict()}


def test_pretrained_pth_with_module_prefix_and_fc8(tmp_path: Path):
    source = small_model(seed=7)
    randomize_batchnorm(source)
    path = tmp_path / "net_er.pth"
    torch.save(psa_classifier_state(source), path)
    loaded = small_model(seed=8, pretrained=path)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


def test_width_mismatch_names_file_key_and_shapes(tmp_path: Path):
    path = tmp_path / "res38_cls.pth"
    torch.save(small_model(width=0.125).state_dict(), path)
    with pytest.raises(CaefError) as error:
        small_model(pretrained=path)
    message = str(error.value)
    assert "res38_cls.pth" in message and "conv1a.weight" in message
    assert "(8, 3, 3, 3)" in message and "(4, 3, 3, 3)" in message


def test_missing_file_and_missing_keys_are_explained(tmp_path: Path):
    with pytest.raises(CaefError, match=r"nowhere\.params.*ademxapp.*res38_cls\.pth"):
        small_model(pretrained=tmp_path / "nowhere.params")
    path = tmp_path / "partial.pth"
    state = small_model().state_dict()
    del state["b4_5.conv_branch2b1.weight"]
    torch.save(state, path)
    with pytest.raises(CaefError, match=r"partial\.pth: 1 of .*b4_5\.conv_branch2b1\.weight"):
        small_model(pretrained=path)
