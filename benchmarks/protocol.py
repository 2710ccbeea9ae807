"""What a full pipeline run (``make voc-full`` / ``make coco-full``) asks of the GPU, read from its YAMLs, and the
projected wall time of each stage from measured throughputs. Pure functions: no device, no timing.

A stage is a list of *phases*, each a number of images pushed through one measured *kind* of work:

=================  ===========================================================================================
kind               what one image costs
=================  ===========================================================================================
classifier_train   one image of a classifier training step (forward + backward + SGD), at the config's crop
cgnet_train        one image of a CGNet training step (CGNet + frozen OC on the erased image), at its crop
affinity_train     one image of an AffinityNet training step, at its crop
deeplab_train      one image of a DeepLab training step, at its crop
cam_val            CAM validation of one image (multi-scale + flip CAMs and single-scale logits)
cam_predict        CAM export of one image (multi-scale + flip CAMs)
crf                dense-CRF seeds of one image (two CRFs, CPU process pool over all cores)
affinity_predict   AffinityNet features of one whole image + the random walk
deeplab_eval       DeepLab evaluation of one whole image (the config's eval scales)
=================  ===========================================================================================

Training phases count what Lightning runs: ``floor(N / batch)`` steps per epoch (``drop_last``) of ``batch``
images, or ``max_steps * batch`` images; validation runs every ``check_val_every_n_epoch`` epochs (made a divisor
of ``max_epochs`` as ``caef.run_layout.validate_last_epoch`` does) or every ``val_check_interval`` steps.
Not counted: data loading (JPEG decoding and augmentation run in 8 loader workers, beside the GPU), checkpoint
writes, the CPU scoring of pseudo labels, and process start-up.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from caef.errors import CaefError
from caef.io import read_yaml_mapping
from caef.pipeline_config import resolve_stage_config

REPO = Path(__file__).resolve().parent.parent

#: images per split of the real datasets (VOC 2012 + SBD train_aug; MS-COCO 2014)
SPLIT_SIZES: dict[str, dict[str, int]] = {
    "voc": {"train_aug": 10582, "train": 1464, "val": 1449},
    "coco": {"train": 82081, "val": 40504},
}
#: classes including background
NUM_CLASSES: dict[str, int] = {"voc": 21, "coco": 81}
#: a typical image of each dataset (height, width): VOC's 500x375, COCO's 640x480
IMAGE_SIZES: dict[str, tuple[int, int]] = {"voc": (375, 500), "coco": (480, 640)}
TRAIN_KINDS = {"classifier": "classifier_train", "cgnet": "cgnet_train", "affinity": "affinity_train"}


@dataclass(frozen=True)
class Phase:
    kind: str
    images: int
    what: str  # e.g. "15 epochs x 661 steps x 16"


@dataclass(frozen=True)
class StagePlan:
    stage: str
    phases: tuple[Phase, ...]
    config: str | None  # the stage YAML, relative to the repository


@dataclass(frozen=True)
class Protocol:
    name: str
    dataset: str
    num_classes: int
    image_size: tuple[int, int]
    stages: tuple[StagePlan, ...]
    sizes: dict[str, dict[str, Any]]  # kind -> what to measure it at (batch, crop, backbone options)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _get(mapping: dict, dotted: str, path: Path, default: Any = KeyError) -> Any:
    value: Any = mapping
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            if default is KeyError:
                raise CaefError(f"{path}: missing key {dotted}; the stage config must set it")
            return default
        value = value[key]
    return value


def _split_size(dataset: str, split: str, path: Path, limit: int | None = None) -> int:
    sizes = SPLIT_SIZES.get(dataset, {})
    if split not in sizes:
        raise CaefError(f"{path}: split {split!r} of dataset {dataset!r} has no known size (known: {sorted(sizes)})")
    return min(sizes[split], limit) if limit else sizes[split]


def _val_every(trainer: dict, epochs: int) -> int:
    every = trainer.get("check_val_every_n_epoch", 1) or 1
    return max(d for d in range(1, min(every, epochs) + 1) if epochs % d == 0)


def _train_phases(stage: str, kind: str, cfg: dict, path: Path, dataset: str) -> list[Phase]:
    trainer, data = _get(cfg, "trainer", path), _get(cfg, "data", path)
    batch = _get(cfg, "data.batch_size", path)
    n_train = _split_size(dataset, _get(cfg, "data.train_split", path), path)
    max_steps = trainer.get("max_steps")
    if max_steps and max_steps > 0:
        phases = [Phase(kind, max_steps * batch, f"{max_steps} steps x {batch}")]
        interval = trainer.get("val_check_interval")
        if kind == "deeplab_train" and isinstance(interval, int) and interval > 0:
            n_val = _split_size(dataset, _get(cfg, "data.val_split", path), path)
            runs = max_steps // interval
            phases.append(Phase("deeplab_eval", runs * n_val, f"{runs} validations x {n_val}"))
        return phases
    epochs = _get(cfg, "trainer.max_epochs", path)
    steps = n_train // batch
    phases = [Phase(kind, epochs * steps * batch, f"{epochs} epochs x {steps} steps x {batch}")]
    if kind in ("classifier_train", "cgnet_train") and "score_split" in data:
        n_score = _split_size(dataset, data["score_split"], path, data.get("score_limit"))
        runs = epochs // _val_every(trainer, epochs)
        phases.append(Phase("cam_val", runs * n_score, f"{runs} validations x {n_score}"))
    return phases


def _relative(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _measure_sizes(kind: str, cfg: dict, path: Path) -> dict[str, Any]:
    model = cfg.get("model", {})
    sizes = {
        "config": _relative(path),
        "backbone": model.get("backbone"),
        "backbone_options": dict(model.get("backbone_options") or {}),
    }
    if kind.endswith("_train"):
        sizes.update(batch=_get(cfg, "data.batch_size", path), crop=_get(cfg, "data.crop_size", path))
    else:
        sizes["batch"] = _get(cfg, "data.eval_batch_size", path, 1)
    if kind.startswith("deeplab"):
        sizes.update(variant=model.get("variant", "v2"), eval_scales=list(model.get("eval_scales", [1.0])),
                     eval_flip=bool(model.get("eval_flip", False)))  # fmt: skip
    if kind.startswith("affinity"):
        sizes["radius"] = model.get("radius", 5)
    return sizes


def load_protocol(experiment: str | Path) -> Protocol:
    """The stages of an experiment YAML (``experiments/voc_full.yaml``) with the images each phase processes."""
    path = Path(experiment)
    exp = read_yaml_mapping(path, "experiment file", "see experiments/")
    dataset = exp.get("dataset")
    if dataset not in SPLIT_SIZES:
        raise CaefError(f"{path}: dataset {dataset!r} has no known split sizes (known: {sorted(SPLIT_SIZES)})")
    configs: dict[str, tuple[Path, dict]] = {}
    for stage, spec in (exp.get("stages") or {}).items():
        if spec and spec.get("config"):  # resolved as `caef pipeline` does (relative to the experiment file)
            cfg_path = Path(resolve_stage_config(spec["config"], path, f"{path} stages.{stage}.config"))
            configs[stage] = (cfg_path, read_yaml_mapping(cfg_path, f"{stage} stage config", "see experiments/"))
    stages, sizes = [], {}

    def add(stage: str, phases: list[Phase]) -> None:
        config = configs[stage][0] if stage in configs else None
        stages.append(StagePlan(stage, tuple(phases), config and _relative(config)))

    for stage in exp.get("stages") or {}:
        cfg_path, cfg = configs.get(stage, (None, None))
        if stage in TRAIN_KINDS or stage in ("deeplab", "fully_supervised"):
            kind = TRAIN_KINDS.get(stage, "deeplab_train")
            phases = _train_phases(stage, kind, cfg, cfg_path, dataset)
            for phase in phases:
                sizes.setdefault(phase.kind, _measure_sizes(phase.kind, cfg, cfg_path))
            add(stage, phases)
        elif stage == "cams":
            n = _split_size(dataset, _get(cfg, "data.predict_split", cfg_path), cfg_path)
            sizes.setdefault("cam_predict", _measure_sizes("cam_predict", cfg, cfg_path))
            add(stage, [Phase("cam_predict", n, f"{n} images")])
        elif stage == "pseudo":
            n = _split_size(dataset, _get(cfg, "data.predict_split", cfg_path), cfg_path)
            sizes.setdefault("affinity_predict", _measure_sizes("affinity_predict", cfg, cfg_path))
            add(stage, [Phase("affinity_predict", n, f"{n} images")])
        elif stage == "crf":  # `caef crf --split` (default train_aug): the CAM export's images
            args = (exp["stages"][stage] or {}).get("args") or []
            split = next((a.split("=", 1)[1] for a in args if a.startswith("--split=")), "train_aug")
            n = _split_size(dataset, split, path)
            add(stage, [Phase("crf", n, f"{n} images")])
        else:
            raise CaefError(f"{path}: stage {stage!r} has no throughput model in benchmarks/protocol.py")
    name = exp.get("name", path.stem)
    return Protocol(name, dataset, NUM_CLASSES[dataset], IMAGE_SIZES[dataset], tuple(stages), sizes)


def project(protocol: Protocol, rates: dict[str, float | None]) -> dict[str, Any]:
    """Seconds per phase and stage, and the total, from images/s per kind. A kind without a rate leaves its stage
    and the total ``None`` (never a partial sum that looks complete)."""
    stages, total = [], 0.0
    for plan in protocol.stages:
        phases, stage_seconds = [], 0.0
        for phase in plan.phases:
            rate = rates.get(phase.kind)
            seconds = phase.images / rate if rate and rate > 0 and math.isfinite(rate) else None
            phases.append({**asdict(phase), "images_per_s": rate, "seconds": seconds})
            stage_seconds = None if seconds is None or stage_seconds is None else stage_seconds + seconds
        stages.append({"stage": plan.stage, "phases": phases, "seconds": stage_seconds})
        total = None if stage_seconds is None or total is None else total + stage_seconds
    missing = sorted({p["kind"] for s in stages for p in s["phases"] if p["seconds"] is None})
    return {"protocol": protocol.name, "stages": stages, "total_seconds": total, "missing_kinds": missing}


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
