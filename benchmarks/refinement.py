"""(c) Dense-CRF seeds and (d) the random walk, the two refinement steps between CAMs and pseudo labels, and (g)
the AffinityNet's loss step that the random walk's affinities are trained with.

(c) runs :func:`caef.stages.crf.run_crf_seeds` itself -- process pool, JPEG + CAM file in, two CRFs (low and high
alpha, 10 mean-field iterations each) and two PNGs out per image -- on a temporary tree of synthetic images with 3-4
classes each, for 1, 2 and all cores. The reference computes CRFs serially in its inference loop, which is the
1-process row.

(d) times :func:`caef.stages.random_walk.propagate` (beta 8, logt 8 => t = 256, radius 5) on a random AffinityNet
feature map of one image at stride 8, against PSA's ``infer_aff``: the affinities go to the CPU, become a sparse
matrix (pairs, identity, transposed pairs), ``.to_dense()``, back to the device, then ``A**beta``, column
normalisation, ``logt`` squarings with ``torch.matmul``, ``cam @ T``, bilinear upsampling, argmax.

(g) times the pairwise affinities ``exp(-mean_c |f_i - f_j|)`` of every radius-5 pair plus PSA's loss, forward and
backward, on a batch of AffinityNet feature maps (crop / 8, 448 channels) against PSA's formulation: the source and
destination features of all pairs gathered into two (B, C, P, h', w') tensors first (``index_select`` in PSA, the
same copies here).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import (
    NUM_CLASSES,
    BenchConfig,
    cpu_count,
    free_device_memory,
    median,
    synthetic_cams,
    synthetic_image,
    time_calls,
)


# -- (c) dense CRF ---------------------------------------------------------------------------------------------
def _make_source(root: Path, count: int, height: int, width: int):
    """A :class:`SegmentationSource` over ``count`` synthetic JPEGs with CAM files of 3-4 classes in ``root/cams``."""
    from PIL import Image

    from caef.data.source import SegmentationSource
    from caef.io import save_npz

    rng = np.random.default_rng(2)
    (root / "images").mkdir(parents=True)
    ids = [f"img{i:05d}" for i in range(count)]
    labels: dict[str, np.ndarray] = {}
    for i, image_id in enumerate(ids):
        Image.fromarray(synthetic_image(height, width, seed=100 + i)).save(root / "images" / f"{image_id}.jpg")
        num = int(rng.integers(3, 5))
        classes = np.sort(rng.choice(np.arange(1, NUM_CLASSES), num, replace=False)).astype(np.int16)
        cams = synthetic_cams(num, height, width, seed=100 + i).astype(np.float16)
        save_npz(root / "cams" / f"{image_id}.npz", cams=cams, classes=classes)
        labels[image_id] = np.zeros(NUM_CLASSES - 1, dtype=np.float32)
        labels[image_id][classes - 1] = 1  # the CAM file holds exactly the image's classes, as caef crf checks

    class BenchSource(SegmentationSource):
        name = "bench"
        ids: list[str] = []

        @property
        def class_names(self) -> tuple[str, ...]:
            return tuple(["background"] + [f"class{k}" for k in range(1, NUM_CLASSES)])

        @property
        def splits(self) -> tuple[str, ...]:
            return ("bench",)

        def split_ids(self, split: str) -> list[str]:
            return list(self.ids)

        def image_path(self, image_id: str) -> Path:
            return self.root / "images" / f"{image_id}.jpg"

        def mask_path(self, image_id: str, split: str) -> Path | None:
            return None

        def _load_class_labels(self) -> dict[str, np.ndarray]:
            return labels

    source = BenchSource(root)
    source.ids = ids
    return source


def crf_worker_counts() -> list[int]:
    cores = cpu_count()
    return sorted({w for w in (1, 2, cores) if w <= cores})


def run_crf(config: BenchConfig, worker_counts: list[int] | None = None) -> dict[str, Any]:
    """Images/s of ``run_crf_seeds`` for 1, 2 and all cores, or ``worker_counts`` (each pool size on
    ``crf_images_per_worker x workers`` images, so every worker gets the same load; pool start-up is included, as
    in a real run)."""
    import pydensecrf.densecrf  # noqa: F401  (fail here, clearly, if the CRF library is missing)

    from caef.stages.crf import CRFSeedConfig, run_crf_seeds

    counts = worker_counts or crf_worker_counts()
    out: dict[str, Any] = {"height": config.image_height, "width": config.image_width, "cores": cpu_count()}
    runs = {}
    with tempfile.TemporaryDirectory(prefix="caef-bench-crf-") as tmp:
        source = _make_source(Path(tmp), config.crf_images_per_worker * max(counts), *_hw(config))
        all_ids = source.ids
        for workers in counts:
            count = config.crf_images_per_worker * workers
            source.ids = all_ids[:count]
            seconds = []
            for repeat in range(config.crf_repeats):
                result = run_crf_seeds(
                    source, "bench", Path(tmp) / "cams", Path(tmp) / f"seeds{workers}_{repeat}", CRFSeedConfig(),
                    workers=workers, progress=False, skip_existing=False,
                )  # fmt: skip
                seconds.append(result["seconds"])
            runs[str(workers)] = {
                "images": count, "seconds": seconds, "images_per_s": count / median(seconds),
            }  # fmt: skip
    serial = runs["1"]["images_per_s"] if "1" in runs else None
    for run in runs.values():
        run["speedup_vs_1"] = run["images_per_s"] / serial if serial else None
    out["workers"] = runs
    return out


def _hw(config: BenchConfig) -> tuple[int, int]:
    return config.image_height, config.image_width


# -- (d) random walk -------------------------------------------------------------------------------------------
@torch.no_grad()
def reference_propagate(cams, features, alpha=16, beta=8, logt=8, stride=8, radius=5) -> torch.Tensor:
    """PSA ``infer_aff.py`` + ``AffinityNet.forward(to_dense=True)``, same pairs and CAM preparation as caef."""
    from caef.stages.random_walk import pair_indices

    num, height, width = cams.shape
    grid = (-(-height // stride), -(-width // stride))
    area = grid[0] * grid[1]
    peak = cams.amax(dim=0)
    full = torch.cat([(1 - peak).pow(alpha)[None], cams])
    full = F.pad(full, (0, grid[1] * stride - width, 0, grid[0] * stride - height))
    cam_vec = F.avg_pool2d(full[None], stride, stride).reshape(num + 1, -1)

    flat = features.reshape(features.shape[0], -1)
    ind_from, ind_to = pair_indices(*grid, radius=radius, crop=True, device=features.device)
    aff = torch.exp(-(flat[:, ind_from] - flat[:, ind_to]).abs().mean(dim=0)).cpu()
    ind_from, ind_to = ind_from.cpu(), ind_to.cpu()
    indices = torch.stack([ind_from, ind_to])
    indices_tp = torch.stack([ind_to, ind_from])
    indices_id = torch.stack([torch.arange(0, area).long(), torch.arange(0, area).long()])
    with warnings.catch_warnings():  # torch >= 2.x warns that invariant checks are off (PSA never checked them)
        warnings.simplefilter("ignore", UserWarning)
        aff_mat = torch.sparse_coo_tensor(
            torch.cat([indices, indices_id, indices_tp], dim=1), torch.cat([aff, torch.ones([area]), aff]), (area, area)
        ).to_dense()
    aff_mat = torch.pow(aff_mat.to(features.device), beta)
    trans_mat = aff_mat / torch.sum(aff_mat, dim=0, keepdim=True)
    for _ in range(logt):
        trans_mat = torch.matmul(trans_mat, trans_mat)
    cam_rw = torch.matmul(cam_vec, trans_mat).view(1, num + 1, *grid)
    cam_rw = F.interpolate(cam_rw, size=full.shape[-2:], mode="bilinear", align_corners=False)
    return cam_rw[0].argmax(dim=0)[:height, :width]


def run_random_walk(config: BenchConfig, device: torch.device) -> dict[str, Any]:
    from caef.stages.random_walk import propagate

    free_device_memory(device)
    height, width = _hw(config)
    grid = (-(-height // 8), -(-width // 8))
    generator = torch.Generator().manual_seed(3)
    coarse = torch.rand(1, config.affinity_channels, max(2, grid[0] // 4), max(2, grid[1] // 4), generator=generator)
    features = F.interpolate(coarse, size=grid, mode="bilinear", align_corners=False)[0].to(device)  # smooth, ELU-like
    classes = torch.tensor([3, 8, 15])
    cams = torch.from_numpy(synthetic_cams(len(classes), height, width, seed=7)).to(device)

    def caef_call() -> torch.Tensor:
        return propagate(cams, classes, features, beta=8, logt=8)

    def reference_call() -> torch.Tensor:
        return reference_propagate(cams, features, beta=8, logt=8)

    agree = float((caef_call().cpu() == torch.cat([torch.zeros(1, dtype=torch.long), classes])[reference_call().cpu()])
                  .float().mean())  # fmt: skip
    out: dict[str, Any] = {
        "height": height, "width": width, "grid": list(grid), "nodes": grid[0] * grid[1], "beta": 8, "logt": 8,
        "label_agreement_with_reference": agree,
    }  # fmt: skip
    for name, fn in (("caef", caef_call), ("reference", reference_call)):
        times = time_calls(fn, device, 1, config.rw_repeats)
        out[name] = {"seconds": times, "seconds_median": median(times), "images_per_s": 1 / median(times)}
    out["speedup"] = out["caef"]["images_per_s"] / out["reference"]["images_per_s"]
    free_device_memory(device)
    return out


def run_affinity_loss(config: BenchConfig, device: torch.device) -> dict[str, Any]:
    from caef.data.affinity_labels import affinity_loss, extract_affinity_labels, pairwise_affinity, shifted_pairs

    free_device_memory(device)
    grid, radius = -(-config.crop // 8), 5
    generator = torch.Generator().manual_seed(5)
    features = torch.rand(config.batch, config.affinity_channels, grid, grid, generator=generator).to(device)
    labels = torch.randint(0, 3, (config.batch, grid, grid), generator=generator).to(device)
    targets = extract_affinity_labels(labels, radius)

    def step(affinities) -> torch.Tensor:
        leaf = features.clone().requires_grad_(True)
        loss, _ = affinity_loss(affinities(leaf), *targets)
        loss.backward()
        return leaf.grad

    def stacked(f: torch.Tensor) -> torch.Tensor:
        src, dst = shifted_pairs(f, radius)
        return torch.exp(-(dst - src).abs().mean(dim=1))

    def caef_call() -> torch.Tensor:
        return step(lambda f: pairwise_affinity(f, radius))

    def reference_call() -> torch.Tensor:
        return step(stacked)

    grad_diff = float((caef_call() - reference_call()).abs().max())
    out: dict[str, Any] = {
        "batch": config.batch, "grid": [grid, grid], "channels": config.affinity_channels, "radius": radius,
        "max_abs_grad_diff": grad_diff,
    }  # fmt: skip
    for name, fn in (("caef", caef_call), ("reference", reference_call)):
        times = time_calls(fn, device, config.warmup, config.repeats)
        out[name] = {"seconds": times, "seconds_median": median(times), "images_per_s": config.batch / median(times)}
    out["speedup"] = out["caef"]["images_per_s"] / out["reference"]["images_per_s"]
    free_device_memory(device)
    return out
