"""Images/s of every GPU kind of work of a pipeline stage (see :mod:`benchmarks.protocol`), at the sizes its YAML
gives, through caef's own LightningModules: ``training_step`` + backward + SGD for the training kinds,
``validation_step`` / ``predict_step`` / ``predict_labels`` (and the random walk) for the inference kinds.

Inputs are synthetic tensors of the real sizes (random normalised crops with VOC-like multi-hot labels, seed grids
and masks; whole images of the dataset's typical size), weights random: speed does not depend on either. Data
loading is not timed. Each kind runs as configured (fp32; on CUDA cuDNN convolutions in TF32, PyTorch's default)
and with bf16 autocast + channels_last (what ``--trainer.precision=bf16-mixed --model.channels_last=true`` do).
"""

from __future__ import annotations

import tempfile
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import autocast, free_device_memory, median, peak_memory_gib, random_labels, time_calls

IGNORE = 255


@dataclass(frozen=True)
class StageScale:
    """How far the measured sizes shrink from the configs' (``FULL``: not at all; ``SMALL``: the CPU form)."""

    name: str
    width: float | None  # ResNet-38 width (None: the config's)
    divisor: int  # crops and images are divided by this (rounded to a multiple of 8)
    batch_cap: int | None
    warmup: int
    steps: int


FULL = StageScale("full", width=None, divisor=1, batch_cap=None, warmup=2, steps=5)
SMALL = StageScale("small", width=0.0625, divisor=4, batch_cap=2, warmup=1, steps=2)
VARIANTS = {"fp32": (False, False), "bf16_cl": (True, True)}  # name -> (bf16 autocast, channels_last)


def _shrink(value: int, scale: StageScale) -> int:
    return value if scale.divisor == 1 else max(72, 8 * round(value / scale.divisor / 8))


def measured_sizes(sizes: dict[str, Any], image_size: tuple[int, int], scale: StageScale) -> dict[str, Any]:
    """What is actually run for a kind: the config's sizes shrunk by ``scale``."""
    out = dict(sizes)
    out["backbone_options"] = dict(sizes.get("backbone_options") or {})
    if scale.width is not None and sizes.get("backbone") == "resnet38":
        out["backbone_options"]["width"] = scale.width
    if scale.batch_cap:
        out["batch"] = min(out["batch"], scale.batch_cap)
    if "crop" in out:
        out["crop"] = _shrink(out["crop"], scale)
    else:
        out["image"] = [_shrink(image_size[0], scale), _shrink(image_size[1], scale)]
    return out


def _images(batch: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=generator)


def _blocky_labels(batch: int, height: int, width: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """(B, H, W) class maps of coarse blocks (background, a few classes, some 255) upsampled to ``H x W``."""
    coarse = torch.randint(0, 4, (batch, 1, max(2, height // 8), max(2, width // 8)), generator=generator)
    classes = torch.tensor([0, 1 + num_classes // 3, 1 + num_classes // 2, IGNORE])
    up = torch.nn.functional.interpolate(coarse.float(), size=(height, width), mode="nearest").long()[:, 0]
    return classes[up]


def _sgd(module: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4)


def _build(kind: str, sizes: dict[str, Any], num_classes: int, workdir: Path, channels_last: bool):
    """The stage's LightningModule (random weights)."""
    opts = sizes["backbone_options"]
    if kind in ("classifier_train", "cam_val", "cam_predict"):
        from caef.stages.classifier import ClassifierModule

        return ClassifierModule(num_classes, sizes["backbone"], backbone_options=opts, channels_last=channels_last)
    if kind == "cgnet_train":
        from caef.models.cam_net import build_cam_net
        from caef.stages.cgnet import CGNetModule

        oc_opts = {k: v for k, v in opts.items() if k == "width"}
        oc_path = workdir / "oc.pth"
        torch.save(build_cam_net(sizes["backbone"], num_classes, **oc_opts).state_dict(), oc_path)
        return CGNetModule(
            str(oc_path), num_classes, sizes["backbone"], backbone_options=opts,
            ordinary_classifier_backbone=sizes["backbone"], ordinary_classifier_options=oc_opts,
            channels_last=channels_last,
        )  # fmt: skip
    if kind.startswith("affinity"):
        from caef.stages.affinity import AffinityNetModule

        return AffinityNetModule(
            num_classes, sizes["backbone"], backbone_options=opts, radius=sizes["radius"], channels_last=channels_last
        )
    if kind.startswith("deeplab"):
        from caef.stages.deeplab import DeepLabModule

        module = DeepLabModule(
            num_classes, sizes["variant"], sizes["backbone"], backbone_options=opts,
            eval_scales=sizes["eval_scales"], eval_flip=sizes["eval_flip"], log_images=0,
        )  # fmt: skip
        if channels_last:  # DeepLabModule has no channels_last option: convert the module and feed NHWC inputs
            module.to(memory_format=torch.channels_last)
        return module
    raise ValueError(f"unknown kind {kind!r}")


def _build_on(device: torch.device, kind: str, sizes: dict[str, Any], num_classes: int, workdir: Path, cl: bool):
    """The module on ``device``, its weights initialised there (a full-width ResNet-38 takes seconds to initialise
    on a CPU, and the check builds a few dozen); built on the CPU and moved if that fails."""
    try:
        with torch.device(device):
            return _build(kind, sizes, num_classes, workdir, cl).to(device)
    except (RuntimeError, NotImplementedError, TypeError):
        free_device_memory(device)
        return _build(kind, sizes, num_classes, workdir, cl).to(device)


def _work(kind: str, module, sizes: dict[str, Any], num_classes: int, device: torch.device, bf16: bool, cl: bool):
    """A zero-argument callable doing one step (training kinds) or one batch of inference."""
    generator = torch.Generator().manual_seed(0)
    batch = sizes["batch"]
    memory_format = torch.channels_last if cl else torch.contiguous_format
    if kind.endswith("_train"):
        crop = sizes["crop"]
        data: dict[str, Any] = {"image": _images(batch, crop, crop, generator)}
        if kind == "affinity_train":
            grid = -(-crop // 8)
            data["label"] = _blocky_labels(batch, grid, grid, num_classes - 1, generator)
        elif kind == "deeplab_train":
            data["mask"] = _blocky_labels(batch, crop, crop, num_classes - 1, generator)
        else:
            data["label"] = random_labels(batch, num_classes - 1, generator)
        data = {k: v.to(device) for k, v in data.items()}
        data["image"] = data["image"].contiguous(memory_format=memory_format)
        module.train()
        optimizer = _sgd(module)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, bf16):
                loss = module.training_step(data, 0)
            loss.backward()
            optimizer.step()

        return step

    height, width = sizes["image"]
    images = _images(batch, height, width, generator).to(device).contiguous(memory_format=memory_format)
    labels = random_labels(batch, num_classes - 1, generator).to(device)
    data = {"id": [f"img{i}" for i in range(batch)], "image": images, "label": labels}
    module.eval()
    ctx = (lambda: autocast(device, bf16)) if bf16 else nullcontext
    if kind == "cam_val":
        call = lambda: module.validation_step(data, 0)  # noqa: E731
    elif kind == "cam_predict":
        call = lambda: module.predict_step(data, 0)  # noqa: E731
    elif kind == "deeplab_eval":
        call = lambda: module.predict_labels(images)  # noqa: E731
    elif kind == "affinity_predict":
        from benchmarks.common import synthetic_cams
        from caef.stages.random_walk import labels_from_scores, walked_scores

        cams = torch.from_numpy(synthetic_cams(3, height, width, seed=7)).to(device)
        classes = torch.tensor([3, 8, 15])

        def walk() -> None:  # the features under the precision's autocast (Lightning wraps predict_step), then
            with torch.no_grad():  # the writer's walk of each image in fp32 (a callback, outside the autocast)
                with ctx():
                    features = module.predict_step(data, 0)["features"]
                for i in range(batch):
                    labels_from_scores(walked_scores(cams, features[i], radius=sizes["radius"]), classes)

        return walk
    else:
        raise ValueError(f"unknown kind {kind!r}")

    def infer() -> None:
        with torch.no_grad(), ctx():
            call()

    return infer


def measure(
    kind: str, sizes: dict[str, Any], num_classes: int, device: torch.device, variant: str, scale: StageScale
) -> dict[str, Any]:
    """Images/s of one kind in one variant: ``scale.warmup`` untimed calls, then ``scale.steps`` timed ones (each
    synchronised); the median call time is reported, every call time kept."""
    bf16, cl = VARIANTS[variant]
    warnings.filterwarnings("ignore", message=".*self.trainer. reference is not registered.*")
    warnings.filterwarnings("ignore", message=".*You are trying to `self.log\\(\\)`.*")
    free_device_memory(device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="caef-gpu-check-") as workdir:
        module = _build_on(device, kind, sizes, num_classes, Path(workdir), cl)
        try:
            fn = _work(kind, module, sizes, num_classes, device, bf16, cl)
            times = time_calls(fn, device, scale.warmup, scale.steps)
            result = {
                "variant": variant, "bf16_autocast": bf16, "channels_last": cl, "batch": sizes["batch"],
                "seconds": times, "seconds_median": median(times), "images_per_s": sizes["batch"] / median(times),
                "peak_memory_gib": peak_memory_gib(device),
            }  # fmt: skip
        finally:
            module = fn = None
            free_device_memory(device)
    return result
