"""The CAM file format shared by CAM export, CRF seeds and the random walk.

``<image_id>.npz`` holds ``cams`` (K, H, W) float16 -- the normalised CAMs of the image's K present classes --
and ``classes`` (K,) int16, their class indices (1..C-1, background = 0 is never stored).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from caef.errors import DataError
from caef.io import save_npz


def save_cams(path: str | Path, cams: torch.Tensor, label: torch.Tensor) -> None:
    """Save the maps of the labelled classes of one image: ``cams`` (C-1, H, W), ``label`` (C-1,) multi-hot."""
    present = torch.nonzero(label > 0).flatten()
    save_npz(
        path,
        cams=cams[present].numpy().astype(np.float16),
        classes=(present + 1).numpy().astype(np.int16),
    )


def load_cams(
    path: str | Path,
    num_classes: int,
    size: tuple[int, int] | None = None,
    label: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(cams float32 (K, H, W), classes int64 (K,)); checks the arrays, their shapes, the class ids (distinct, in
    ``1..num_classes-1``), finiteness and (optionally) the size ``(H, W)`` of the image and, given the image's
    multi-hot ``label`` (C-1,), that the file holds exactly the image's labelled classes: CAMs of another image or
    dataset with as many classes would otherwise pass every other check. Every problem is a :class:`DataError`
    naming the file (and, for a class mismatch, both class lists, by name where ``class_names`` are given)."""
    path = Path(path)
    redo = "delete it and re-run CAM prediction (`caef cgnet predict`)"
    if not path.is_file():
        raise DataError(f"CAM file not found: {path} (run CAM prediction first: `caef cgnet predict`)")
    try:
        with np.load(path) as data:
            missing = [key for key in ("cams", "classes") if key not in data.files]
            if missing:
                raise DataError(
                    f"CAM file {path} lacks the array(s) {missing} (it holds {sorted(data.files)}), so it is not a "
                    f"caef CAM file; {redo}"
                )
            cams, classes = data["cams"].astype(np.float32), data["classes"]
    except DataError:
        raise
    except Exception as exc:  # truncated or not a zip (BadZipFile, EOFError, OSError, ValueError ...)
        raise DataError(f"cannot read CAM file {path}: {exc} (truncated or corrupt; {redo})") from exc
    if cams.ndim != 3 or classes.ndim != 1 or len(cams) != len(classes):
        raise DataError(
            f"CAM file {path} has cams {cams.shape} and classes {classes.shape}; expected (K, H, W) and (K,); {redo}"
        )
    if not np.issubdtype(classes.dtype, np.integer):
        raise DataError(f"CAM file {path} has class ids of dtype {classes.dtype}, expected integers; {redo}")
    classes = classes.astype(np.int64)
    if len(classes) and (
        classes.min() < 1 or classes.max() >= num_classes or len(set(classes.tolist())) < len(classes)
    ):
        raise DataError(
            f"CAM file {path} has class ids {classes.tolist()}; expected distinct ids in 1..{num_classes - 1} "
            f"({num_classes} classes with background): is it from another dataset or class count? {redo}"
        )
    if size is not None and cams.shape[1:] != tuple(size):
        raise DataError(
            f"CAM file {path} is {cams.shape[2]}x{cams.shape[1]} but its image is {size[1]}x{size[0]} (width x "
            f"height): is it from another dataset or image set? {redo}"
        )
    if not np.isfinite(cams).all():
        raise DataError(f"CAM file {path} holds NaN or infinite values (a diverged network?); {redo}")
    if label is not None:
        expected = np.flatnonzero(np.asarray(label) > 0) + 1
        if sorted(classes.tolist()) != expected.tolist():
            raise DataError(
                f"CAM file {path} holds the classes {_named(classes, class_names)} but its image is labelled "
                f"{_named(expected, class_names)}: is it from another image or dataset? {redo}"
            )
    return cams, classes


def _named(classes: Sequence[int] | np.ndarray, class_names: Sequence[str] | None) -> str:
    ids = sorted(int(c) for c in classes)
    if class_names is None:
        return str(ids)
    return "[" + ", ".join(f"{c} {class_names[c]}" if c < len(class_names) else str(c) for c in ids) + "]"
