"""Interchange with the reference code bases: CAM files and trained networks in their formats.

``caef export cams --format irn|psa --cam-dir D --out DIR`` and ``caef import cams --format irn|psa --in DIR --out D``
convert caef's ``<id>.npz`` (``cams`` (K, H, W) float16 of the image's classes, ``classes`` their ids 1..C-1) to and
from the ``<id>.npy`` dicts the reference scripts write and read (``np.load(..., allow_pickle=True).item()``):

* ``psa`` (PSA's ``infer_cls.py``, OC-CSE's ``infer.py``; read by PSA's ``infer_aff.py`` and OC-CSE's
  ``evaluation.py``): ``{class_index: cam}``, keys the 0-based foreground index (caef class id - 1), each value an
  (H, W) float32 map at the image's size;
* ``irn`` (IRN's ``make_cam.py``; read by its ``eval_cam.py``, ``cam_to_ir_label.py``, ``make_sem_seg_labels.py``):
  ``{"keys": int64 (K,) 0-based foreground indices, "cam": torch float32 (K, ceil(H/4), ceil(W/4)), "high_res":
  float32 (K, H, W)}``. caef keeps full-resolution maps only, so the stride-4 ``cam`` is their 4x4 average pool
  (windows clipped at the border), normalised per class by its max (+1e-5) as IRN normalises its own.

Export widens float16 to float32 exactly, and import reads the full-size map (PSA's value, IRN's ``high_res``), so
caef -> IRN/PSA -> caef is bit-exact; a map that was float32 to begin with is rounded to float16 on import (relative
error at most 2^-11). An image without classes is an empty PSA dict, which has no size: it is imported as
(0, 0, 0) maps (IRN's ``high_res`` keeps the size).

``caef export net --format psa|occse --ckpt C --out X.pth`` writes a caef ResNet-38 network under the reference's
parameter names (the inverse of :func:`caef.models.backbones.resnet38.convert_reference_state_dict`): a classifier
or CGNet as PSA's ``resnet38_cls.Net`` / OC-CSE's ``Net_er`` (trunk + ``fc8.weight``; ``--network oc`` takes a
CGNet's frozen classifier, OC-CSE's ``Net_cl``), an AffinityNet as PSA's ``resnet38_aff.Net`` (trunk + ``f8_3``,
``f8_4``, ``f8_5``, ``f9``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from caef.errors import CaefError, DataError, check_writable_dir
from caef.io import atomic_path, save_npz

FORMATS = ("irn", "psa")
IRN_STRIDE = 4


# -- CAM files ---------------------------------------------------------------------------------------------
def to_reference(cams: np.ndarray, classes: np.ndarray, fmt: str) -> dict:
    """caef CAMs ``(K, H, W)`` of classes ``(K,)`` (ids 1..C-1) -> the ``fmt`` dict (see the module docstring)."""
    cams = np.asarray(cams, dtype=np.float32)
    indices = np.asarray(classes, dtype=np.int64) - 1
    if fmt == "psa":
        return {int(index): cam for index, cam in zip(indices, cams)}
    if fmt == "irn":
        strided = F.avg_pool2d(torch.from_numpy(cams)[:, None], IRN_STRIDE, IRN_STRIDE, ceil_mode=True)[:, 0]
        strided = strided / (strided.amax(dim=(1, 2), keepdim=True) + 1e-5)
        return {"keys": indices, "cam": strided, "high_res": cams}
    raise CaefError(f"unknown CAM format {fmt!r}; use one of {', '.join(FORMATS)}")


def from_reference(data: Any, fmt: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The ``fmt`` dict read from ``path`` -> caef ``(cams float16 (K, H, W), classes int16 (K,))``."""
    redo = f"is it a {fmt.upper()} CAM file (np.save of a dict)?"
    if not isinstance(data, dict):
        raise DataError(f"{path} holds a {type(data).__name__}, not a dict; {redo}")
    if fmt == "psa":
        if not all(isinstance(k, (int, np.integer)) for k in data):
            raise DataError(f"{path} has keys {list(data)[:5]}, expected 0-based class indices; {redo}")
        keys = sorted(int(k) for k in data)
        maps = [np.asarray(data[k]) for k in keys]
    elif fmt == "irn":
        if "keys" not in data or "high_res" not in data:
            raise DataError(f"{path} has entries {sorted(map(str, data))}, expected keys and high_res; {redo}")
        keys = [int(k) for k in np.asarray(data["keys"]).reshape(-1)]
        high_res = np.asarray(data["high_res"])
        if high_res.ndim != 3:
            raise DataError(f"{path} has high_res of shape {high_res.shape}, expected (K, H, W); {redo}")
        maps = list(high_res)
    else:
        raise CaefError(f"unknown CAM format {fmt!r}; use one of {', '.join(FORMATS)}")
    if any(k < 0 for k in keys) or len(set(keys)) != len(keys) or len(maps) != len(keys):
        raise DataError(f"{path} has class keys {keys} for {len(maps)} maps; expected distinct indices >= 0; {redo}")
    if len({m.shape for m in maps}) > 1 or any(m.ndim != 2 for m in maps):
        raise DataError(f"{path} has maps of shapes {sorted({m.shape for m in maps})}; expected equal (H, W); {redo}")
    height, width = maps[0].shape if maps else (high_res.shape[1:] if fmt == "irn" else (0, 0))
    cams = np.stack(maps).astype(np.float16) if maps else np.zeros((0, height, width), np.float16)
    return cams, (np.asarray(keys, dtype=np.int64) + 1).astype(np.int16)


def export_cams(cam_dir: str | Path, out_dir: str | Path, fmt: str, num_classes: int = 256) -> int:
    """Every ``<id>.npz`` of ``cam_dir`` as ``<out_dir>/<id>.npy`` in ``fmt``; returns the number written."""
    from caef.cam_files import load_cams

    files = _files(cam_dir, "*.npz", "caef CAM files (<id>.npz, from `caef cgnet predict`)")
    check_writable_dir(out_dir, "--out")
    for path in tqdm(files, desc=f"export CAMs ({fmt})", unit="img"):
        cams, classes = load_cams(path, num_classes)
        with atomic_path(Path(out_dir) / f"{path.stem}.npy") as tmp, open(tmp, "wb") as handle:
            np.save(handle, to_reference(cams, classes, fmt), allow_pickle=True)
    return len(files)


def import_cams(in_dir: str | Path, cam_dir: str | Path, fmt: str) -> int:
    """Every ``<id>.npy`` of ``in_dir`` (``fmt``) as a caef CAM file ``<cam_dir>/<id>.npz``; returns the number."""
    files = _files(in_dir, "*.npy", f"{fmt.upper()} CAM files (<id>.npy)")
    check_writable_dir(cam_dir, "--out")
    for path in tqdm(files, desc=f"import CAMs ({fmt})", unit="img"):
        try:
            data = np.load(path, allow_pickle=True).item()
        except Exception as exc:  # truncated, not .npy, not a 0-d object array ...
            raise DataError(f"cannot read {path}: {exc}; is it a {fmt.upper()} CAM file (np.save of a dict)?") from exc
        cams, classes = from_reference(data, fmt, path)
        save_npz(Path(cam_dir) / f"{path.stem}.npz", cams=cams, classes=classes)
    return len(files)


def _files(folder: str | Path, pattern: str, what: str) -> list[Path]:
    folder = Path(folder)
    files = sorted(folder.glob(pattern)) if folder.is_dir() else []
    if not files:
        raise CaefError(f"no {what} in {folder}; point the input folder at them")
    return files


# -- networks ----------------------------------------------------------------------------------------------
def reference_state_dict(checkpoint_path: str | Path, network: str = "main") -> dict[str, torch.Tensor]:
    """The ResNet-38 network of a caef checkpoint under the reference's names. ``network``: ``main`` (the
    checkpoint's own network) or ``oc`` (a CGNet's frozen ordinary classifier)."""
    from caef.checkpoints import read_lightning_checkpoint
    from caef.models.backbones.resnet38 import is_trunk_key

    path = Path(checkpoint_path)
    checkpoint = read_lightning_checkpoint(path, "checkpoint", "give a caef classifier, CGNet or AffinityNet .ckpt")
    hparams, state = checkpoint["hyper_parameters"], checkpoint["state_dict"]
    if hparams.get("backbone") != "resnet38":
        raise CaefError(
            f"{path} has backbone {hparams.get('backbone')!r}; the reference scripts (PSA, OC-CSE) only run "
            "ResNet-38 networks"
        )
    prefix = {"main": "net.", "oc": "ordinary_classifier."}.get(network)
    if prefix is None:
        raise CaefError(f"--network must be main or oc, got {network!r}")
    own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not own:
        raise CaefError(f"{path} holds no {network} network ({prefix}* tensors); --network oc needs a CGNet checkpoint")
    out: dict[str, torch.Tensor] = {}
    for key, value in own.items():
        name = key.removeprefix("backbone.")
        if key == "classifier.weight":
            out["fc8.weight"] = value
        elif (key.startswith("backbone.") and is_trunk_key(name)) or name.split(".")[0] in (
            "f8_3",
            "f8_4",
            "f8_5",
            "f9",
        ):
            out[name] = value
        else:
            raise CaefError(f"{path}: tensor {prefix}{key} has no place in the reference networks")
    return out


def export_net(checkpoint_path: str | Path, out: str | Path, fmt: str, network: str = "main") -> int:
    """Write :func:`reference_state_dict` as a ``.pth`` the ``fmt`` scripts load; returns the number of tensors."""
    if fmt not in ("psa", "occse"):
        raise CaefError(f"unknown network format {fmt!r}; use psa or occse")
    state = reference_state_dict(checkpoint_path, network)
    if fmt == "occse" and "fc8.weight" not in state:
        raise CaefError(f"{checkpoint_path} is not a CAM network: OC-CSE has no AffinityNet (use --format psa)")
    with atomic_path(out) as tmp:
        torch.save(state, tmp)
    return len(state)


# -- commands ----------------------------------------------------------------------------------------------
def _parser(prog: str, export: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    cams = sub.add_parser("cams", help="CAM files")
    cams.add_argument("--format", choices=FORMATS, required=True)
    if export:
        cams.add_argument("--cam-dir", required=True, help="caef CAM files (<id>.npz)")
        cams.add_argument("--num-classes", type=int, default=256, help="classes with background (checks the ids)")
        net = sub.add_parser("net", help="a trained ResNet-38 network as a reference .pth")
        net.add_argument("--format", choices=("psa", "occse"), required=True)
        net.add_argument("--ckpt", required=True, help="caef checkpoint (classifier, CGNet or AffinityNet)")
        net.add_argument("--network", choices=("main", "oc"), default="main", help="oc: a CGNet's frozen classifier")
        net.add_argument("--out", required=True, help="the .pth to write")
    else:
        cams.add_argument("--in", dest="in_dir", required=True, help="reference CAM files (<id>.npy)")
    cams.add_argument("--out", required=True, help="output folder")
    return parser


def export_main(args: Sequence[str]) -> int:
    parsed = _parser("caef export", export=True).parse_args(list(args))
    if parsed.what == "cams":
        count = export_cams(parsed.cam_dir, parsed.out, parsed.format, parsed.num_classes)
        print(f"wrote {count} {parsed.format.upper()} CAM files to {parsed.out}")
    else:
        count = export_net(parsed.ckpt, parsed.out, parsed.format, parsed.network)
        print(f"wrote {count} tensors ({parsed.format} names) to {parsed.out}")
    return 0


def import_main(args: Sequence[str]) -> int:
    parsed = _parser("caef import", export=False).parse_args(list(args))
    count = import_cams(parsed.in_dir, parsed.out, parsed.format)
    print(f"wrote {count} caef CAM files to {parsed.out}")
    return 0
