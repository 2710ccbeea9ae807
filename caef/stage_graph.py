"""The stages of ``caef pipeline``: which ``caef`` command each runs, what it needs, what it leaves behind.

One table, read by the pipeline (order, argv, resume and skip), the stage cache (what to copy) and the command line
(``--from``/``--until`` choices, ``--<stage>.<key>`` flags), so a new stage is one entry here.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from caef.run_layout import CAM_DIR, CHECKPOINT, PSEUDO_DIR, SEED_DIR, layout_path

LIGHTNING_STAGES = ("classifier", "cgnet", "affinity", "deeplab")
#: the commands a pipeline's ``precision`` reaches: their networks may run in bf16 autocast. The AffinityNet's
#: pairwise feature distances and the random walk's matrix powers stay in fp32 (t = 256 steps would amplify bf16
#: rounding), so the ``affinity`` command keeps its own config's precision
AUTOCAST_COMMANDS = ("classifier", "cgnet", "deeplab")


@dataclass(frozen=True)
class Product:
    """One thing a finished stage must have left behind under the run folder: a file, or (``{id}`` in the path)
    one file per image id of the split the stage ran on, which ``split_key`` sets (a ``--<key>=`` flag of the stage
    or its config; ``default_split`` otherwise)."""

    path: str  # e.g. "classifier/last.ckpt", "cams/cgnet/{id}.npz"
    split_key: str | None = None  # e.g. "data.predict_split" (Lightning) or "split" (caef crf --split)
    default_split: str = "train_aug"

    @property
    def per_image(self) -> bool:
        return "{id}" in self.path

    def files(self, run_dir: Path, ids: Sequence[str]) -> list[Path]:
        if not self.per_image:
            return [run_dir / self.path]
        return [run_dir / self.path.format(id=image_id) for image_id in ids]


@dataclass(frozen=True)
class StageSpec:
    """One pipeline step: which ``caef`` command it runs, what it needs, what it leaves behind."""

    name: str
    command: tuple[str, ...]  # e.g. ("cgnet", "predict")
    needs: tuple[str, ...]
    outputs: tuple[str, ...]  # paths under the run dir that hold its results (removed on a fresh start, copied)
    checkpoint: str | None = None  # train stages: <run_dir>/<checkpoint> to resume from
    help: str = ""
    products: tuple[Product, ...] = field(default_factory=tuple)  # what "done" means: checked by verify_products
    #: the upstream results it reads, as ``(flag, layout path, stage)``: the pipeline passes
    #: ``<flag>=<run_dir>/<path>`` (e.g. the CGNet checkpoint to ``caef cgnet predict``)
    inputs: tuple[tuple[str, str, str], ...] = ()

    @property
    def trains(self) -> bool:
        return self.command[-1] == "fit"

    def outputs_exist(self, run_dir: Path) -> bool:
        return all((run_dir / out).exists() for out in self.outputs)

    def clear_outputs(self, run_dir: Path) -> None:
        """A fresh start: remove what an earlier run of this stage (other config or inputs) left behind."""
        paths = {run_dir / out.split("/")[0] if self.trains else run_dir / out for out in self.outputs}
        for path in paths:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def verify_products(spec: StageSpec, run_dir: Path, ids: dict[Product, Sequence[str]]) -> list[tuple[Path, str]]:
    """Every product of ``spec`` that is missing or unreadable, as ``(path, why)``; empty: the stage is done.
    ``ids`` gives the image ids of each per-image product's split."""
    from concurrent.futures import ThreadPoolExecutor

    paths = [path for product in spec.products for path in product.files(run_dir, ids.get(product, ()))]
    with ThreadPoolExecutor(8) as pool:  # file reads and decoding release the GIL; storage may be networked
        reasons = list(pool.map(unreadable, paths))
    return [(path, why) for path, why in zip(paths, reasons) if why]


def unreadable(path: Path) -> str | None:
    """Why ``path`` is not a usable result (None: it is): missing, empty, or not loadable as its kind (a
    checkpoint is loaded memory-mapped, a ``.npz`` opened with its arrays listed, a ``.png`` decoded)."""
    try:
        if not path.is_file():
            return "missing"
        if path.stat().st_size == 0:
            return "empty"
        if path.suffix == ".ckpt":
            import torch

            torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        elif path.suffix == ".npz":
            import numpy as np

            with np.load(path) as data:
                if not {"cams", "classes"} <= set(data.files):
                    return f"lacks cams/classes (holds {sorted(data.files)})"
        elif path.suffix == ".png":
            from PIL import Image

            with Image.open(path) as image:
                image.verify()
    except Exception as exc:  # noqa: BLE001 -- any failure to read means the result must be written again
        return f"unreadable ({type(exc).__name__}: {exc})"
    return None


def _ckpt(stage: str) -> str:
    return layout_path(CHECKPOINT, stage)


_CGNET_CAMS = layout_path(CAM_DIR, "cgnet")
_CAMS = Product(f"{_CGNET_CAMS}/{{id}}.npz", "data.predict_split")
_SEEDS = tuple(Product(f"{SEED_DIR}/{kind}/{{id}}.png", "split") for kind in ("low", "high"))
STAGES: dict[str, StageSpec] = {
    s.name: s
    for s in (
        StageSpec("classifier", ("classifier", "fit"), (), (_ckpt("classifier"),), _ckpt("classifier"),
                  "ordinary classifier", (Product(_ckpt("classifier")),)),
        StageSpec("cgnet", ("cgnet", "fit"), ("classifier",), (_ckpt("cgnet"),), _ckpt("cgnet"),
                  "CGNet (adversarial erasing against the frozen classifier)", (Product(_ckpt("cgnet")),)),
        StageSpec("cams", ("cgnet", "predict"), ("cgnet",), (_CGNET_CAMS,), None, "CGNet CAM export", (_CAMS,),
                  (("--ckpt_path", CHECKPOINT, "cgnet"),)),
        StageSpec("crf", ("crf",), ("cams",), (f"{SEED_DIR}/low", f"{SEED_DIR}/high"), None, "dense-CRF seeds",
                  _SEEDS, (("--cam-dir", CAM_DIR, "cgnet"), ("--out-dir", SEED_DIR, ""))),
        StageSpec("affinity", ("affinity", "fit"), ("cgnet", "crf"), (_ckpt("affinity"),), _ckpt("affinity"),
                  "AffinityNet", (Product(_ckpt("affinity")),)),
        StageSpec("pseudo", ("affinity", "predict"), ("affinity", "cams", "crf"), (PSEUDO_DIR,), None,
                  "random walk -> pseudo labels (scored)", (Product(f"{PSEUDO_DIR}/{{id}}.png", "data.predict_split"),),
                  (("--ckpt_path", CHECKPOINT, "affinity"),)),
        StageSpec("deeplab", ("deeplab", "fit"), ("pseudo",), (_ckpt("deeplab"),), _ckpt("deeplab"),
                  "DeepLab on pseudo labels", (Product(_ckpt("deeplab")),), (("--data.label_dir", PSEUDO_DIR, ""),)),
        StageSpec("fully_supervised", ("deeplab", "fit"), (), (_ckpt("fully_supervised"),),
                  _ckpt("fully_supervised"), "DeepLab on ground truth (upper bound)",
                  (Product(_ckpt("fully_supervised")),)),
    )
}  # fmt: skip
ORDER = tuple(STAGES)
