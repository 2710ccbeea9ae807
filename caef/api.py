"""The Python API: load a trained network, run it on images, read and score a run's outputs, without the CLI.

    import caef
    cgnet = caef.load("runs/demo", "cgnet")                     # a run folder + stage, or any checkpoint file
    cams = caef.cams(cgnet, image, classes=[1, 3])              # (C-1, H, W) float32 in [0, 1]
    affinity = caef.load("runs/demo", "affinity")
    label = caef.pseudo_label(affinity, image, cams, classes=[1, 3])   # (H, W) class ids, the random walk
    deeplab = caef.load("runs/demo", "deeplab", eval_scales=[0.5, 1.0, 1.5], eval_flip=True)
    pred = caef.predict(deeplab, image)                         # (H, W) class ids
    caef.score_labels("runs/demo/pseudo", "synthetic", "data/synth", split="train")

Images are ``(H, W, 3)`` uint8 arrays or PIL images, one or a list (equal sizes) / ``(B, H, W, 3)`` array; a
single image gives single results, a batch a leading batch axis. Everything runs through the stage modules' own
code (multi-scale CAM inference, AffinityNet features and the random walk, DeepLab's evaluation), so the results
are those of ``caef cgnet predict``, ``caef affinity predict`` and ``caef deeplab validate``.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from caef.checkpoints import read_lightning_checkpoint
from caef.errors import CaefError
from caef.run_layout import CHECKPOINT, SUMMARY, layout_path

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = ["cams", "images_to_tensor", "load", "predict", "pseudo_label", "read_cams", "read_labels", "read_summary",
           "score_labels"]  # fmt: skip

#: what a checkpoint's hyper-parameters tell about its module, for checkpoints that do not record their class
_SIGNATURES = (("ordinary_classifier", "cgnet"), ("variant", "deeplab"), ("radius", "affinity"))
#: hyper-parameters naming files that only initialise a network before training
_INITIAL_WEIGHTS = ("pretrained", "init_checkpoint")
_HINT = "give a runs/<name>/<stage>/last.ckpt written by caef (classifier, cgnet, affinity, deeplab)"


# -- loading -----------------------------------------------------------------------------------------------
def checkpoint_path(path: str | Path, stage: str | None = None) -> Path:
    """``path`` itself (a file), ``<path>/<stage>/last.ckpt`` (a run folder) or ``<path>/last.ckpt`` (a stage
    folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / layout_path(CHECKPOINT, stage) if stage else path / "last.ckpt"
    if not path.is_file():
        raise CaefError(f"checkpoint not found: {path}; {_HINT} (a run folder needs the stage: load(run, 'cgnet'))")
    return path


def module_class(checkpoint: dict[str, Any], path: Path) -> type[pl.LightningModule]:
    """The LightningModule class of a caef checkpoint: the class it records (a subclass given with
    ``--model=...``), else the stage its folder is named after, else the one its hyper-parameters fit."""
    from caef.stage_cli import STAGES as COMMANDS
    from caef.stage_graph import STAGES

    hparams = checkpoint["hyper_parameters"]
    if class_path := hparams.get("_class_path"):
        module_name, _, name = class_path.rpartition(".")
        try:
            return getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError) as exc:
            raise CaefError(
                f"checkpoint {path} is of class {class_path}, which cannot be imported ({exc}); put its package on "
                "PYTHONPATH"
            ) from exc
    stage = path.parent.name
    command = STAGES[stage].command[0] if stage in STAGES else None
    if command not in COMMANDS:
        command = next((cmd for key, cmd in _SIGNATURES if key in hparams), "classifier")
    module_name, _, name = COMMANDS[command][0].partition(":")
    return getattr(importlib.import_module(module_name), name)


def load(path: str | Path, stage: str | None = None, device: str | torch.device = "cpu", **overrides: Any):
    """The trained module of a checkpoint, in eval mode on ``device``.

    ``path``: a checkpoint file, a stage folder, or a run folder with ``stage`` (``classifier``, ``cgnet``,
    ``affinity``, ``deeplab``, ``fully_supervised``). ``overrides`` replace hyper-parameters, e.g. DeepLab's
    ``eval_scales``/``eval_flip``/``crf_eval`` or a CAM network's ``msf_scales``. Files that only initialised the
    network (``pretrained``, ``init_checkpoint``) are not read, and a CGNet checkpoint carries its frozen ordinary
    classifier, so a checkpoint loads wherever the run folder was moved.
    """
    path = checkpoint_path(path, stage)
    checkpoint = read_lightning_checkpoint(path, "checkpoint", _HINT)
    cls = module_class(checkpoint, path)
    # the checkpoint's weights replace any initial ones: files named for initialisation are not read (they may be
    # gone or elsewhere on this machine)
    initial = {key: None for key in _INITIAL_WEIGHTS if checkpoint["hyper_parameters"].get(key)}
    module = cls.load_from_checkpoint(path, map_location="cpu", weights_only=False, **(initial | overrides))
    return module.to(device).eval()


# -- images ------------------------------------------------------------------------------------------------
def images_to_tensor(images: Any) -> tuple[Tensor, bool]:
    """``(B, 3, H, W)`` normalised float tensor (caef's evaluation transform) and whether ``images`` was one image."""
    from PIL import Image

    from caef.data.transforms import eval_transform

    single = isinstance(images, Image.Image) or (isinstance(images, np.ndarray) and images.ndim == 3)
    items = [images] if single else list(images)
    arrays = [np.asarray(im.convert("RGB")) if isinstance(im, Image.Image) else np.asarray(im) for im in items]
    for index, array in enumerate(arrays):
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise CaefError(
                f"image {index} is a {array.dtype} array of shape {array.shape}; give (H, W, 3) uint8 RGB arrays or "
                "PIL images"
            )
    if not arrays:
        raise CaefError("no images given")
    if len({a.shape for a in arrays}) > 1:
        raise CaefError(
            f"a batch needs images of one size, got {sorted({a.shape[:2] for a in arrays})}; pass them one at a time"
        )
    transform = eval_transform()
    return torch.stack([transform(image=a)["image"] for a in arrays]), single


def _class_rows(classes: Any, batch: int, num_foreground: int, device: torch.device) -> Tensor:
    """``(B, C-1)`` multi-hot rows from class ids (1-based; one list for every image, or one list per image);
    None: every class."""
    if classes is None:
        return torch.ones(batch, num_foreground, device=device)
    per_image = classes if len(classes) and isinstance(classes[0], (list, tuple, np.ndarray)) else [classes] * batch
    if len(per_image) != batch:
        raise CaefError(f"classes holds {len(per_image)} lists for {batch} images")
    rows = torch.zeros(batch, num_foreground, device=device)
    for row, ids in zip(rows, per_image):
        ids = [int(i) for i in ids]
        if any(not 1 <= i <= num_foreground for i in ids):
            raise CaefError(f"class ids {ids} out of range: foreground classes are 1..{num_foreground}")
        row[[i - 1 for i in ids]] = 1.0
    return rows


# -- running networks --------------------------------------------------------------------------------------
@torch.no_grad()
def cams(
    module,
    images: Any,
    classes: Sequence[int] | Sequence[Sequence[int]] | None = None,
    scales: Sequence[float] | None = None,
    flip: bool | None = None,
) -> np.ndarray:
    """Normalised multi-scale CAMs ``(C-1, H, W)`` (``(B, C-1, H, W)`` for a batch) of a classifier or CGNet:
    the maps of ``classes`` (1-based ids; None: every class), each divided by its maximum; other maps are 0.
    ``scales``/``flip`` default to the module's ``msf_scales``/``msf_flip``, as ``caef cgnet predict``."""
    from caef.stages.cam_inference import multiscale_cams

    x, single = images_to_tensor(images)
    x = x.to(module.device)
    labels = _class_rows(classes, len(x), module.num_foreground, module.device)
    scales = module.msf_scales if scales is None else tuple(scales)
    flip = module.msf_flip if flip is None else flip
    out = multiscale_cams(module.cams_of, x, labels, scales, flip).float().cpu().numpy()
    return out[0] if single else out


@torch.no_grad()
def pseudo_label(
    affinity,
    images: Any,
    cam_maps: np.ndarray,
    classes: Sequence[int] | Sequence[Sequence[int]],
    alpha: float = 16.0,
    beta: float = 8.0,
    logt: int = 8,
) -> np.ndarray:
    """Random-walk label maps ``(H, W)`` (``(B, H, W)``) from an AffinityNet and CAMs as :func:`cams` returns them
    (``(C-1, H, W)`` per image); ``classes``: the image's classes (1-based), whose maps are walked. PSA's settings
    by default, as ``PseudoLabelWriter``."""
    from caef.stages.random_walk import propagate

    x, single = images_to_tensor(images)
    maps = np.asarray(cam_maps, dtype=np.float32)
    maps = maps[None] if single else maps
    rows = _class_rows(classes, len(x), maps.shape[1], torch.device("cpu"))
    features = affinity.predict_step({"image": x.to(affinity.device), "id": list(range(len(x)))}, 0)["features"]
    labels = []
    for image_maps, row, feats in zip(maps, rows, features):
        ids = torch.nonzero(row).flatten()
        present = torch.from_numpy(image_maps)[ids]
        walk = {"alpha": alpha, "beta": beta, "logt": logt, "radius": affinity.hparams.radius}
        labels.append(propagate(present, ids + 1, feats, **walk).cpu().numpy().astype(np.uint8))
    out = np.stack(labels)
    return out[0] if single else out


@torch.no_grad()
def predict(deeplab, images: Any) -> np.ndarray:
    """DeepLab's label maps ``(H, W)`` (``(B, H, W)``) uint8, with its evaluation settings (``eval_scales``,
    ``eval_flip``, ``crf_eval``: give them to :func:`load`), as ``caef deeplab validate`` / ``predict``."""
    x, single = images_to_tensor(images)
    out = deeplab.predict_labels(x.to(deeplab.device)).cpu().numpy().astype(np.uint8)
    return out[0] if single else out


# -- a run's outputs ---------------------------------------------------------------------------------------
def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """``<run_dir>/summary.json``: every stage's scores, the seed, backbones, times."""
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        raise CaefError(f"no summary at {path}; is {run_dir} a caef run folder (runs/<name>)?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CaefError(f"{path} is not valid JSON ({exc}); rerun the pipeline to rewrite it") from exc


def read_cams(path: str | Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A CAM file ``<id>.npz``: ``(K, H, W)`` float32 maps of the image's classes and their ids ``(K,)``."""
    from caef.cam_files import load_cams

    return load_cams(path, num_classes)


def read_labels(path: str | Path, num_classes: int = 256) -> np.ndarray:
    """A label PNG (pseudo label, CRF seed, prediction) as ``(H, W)`` uint8 class ids (255: ignore / unsure)."""
    from caef.data.source import read_mask

    return read_mask(path, num_classes)


def score_labels(
    label_dir: str | Path, dataset: str, root: str | Path, split: str = "train", limit: int | None = None
) -> dict[str, Any]:
    """mIoU (percent) and per-class IoU of a folder of ``<id>.png`` label maps against a split's ground truth (the
    pseudo labels' score in ``summary.json``); images without a file are left out and counted."""
    from caef.data.datamodule import open_source
    from caef.stages.label_scoring import score_label_maps

    scores = score_label_maps(open_source(dataset, root), split, pseudo_dir=label_dir, limit=limit, progress=False)
    summary = scores.summary()
    if "pseudo_label_miou" not in summary:
        raise CaefError(f"no label map of split {split!r} found in {label_dir} (<image id>.png)")
    return {"miou": summary["pseudo_label_miou"], "iou": summary["pseudo_label_iou"],
            "images": summary["pseudo_label_images"]}  # fmt: skip
