"""``runs/<name>/report.md``: a pipeline run's results as a page with PNG plots.

* ``iou_per_class.png``: per-class IoU of every stage that recorded one (OC CAM, CGNet CAM, CRF seeds,
  pseudo labels, DeepLab on pseudo labels and on ground truth), grouped by class;
* ``overlays_train.png``: a few scoring-split images with their ground truth, thresholded CGNet CAM, CRF
  seeds and pseudo label;
* ``overlays_val.png``: a few validation images with ground truth and the DeepLab predictions.

Everything is read from the run folder (``summary.json``, CAM files, seeds, pseudo labels, checkpoints); a
missing piece leaves its panel out, so a partial run (``--until``) still gets a report.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from caef.data.source import IGNORE_INDEX, SegmentationSource, read_mask, voc_palette
from caef.io import atomic_path

#: (summary key of per-class IoU, label) in pipeline order
IOU_KEYS = (
    ("oc_cam_iou", "OC CAM"),
    ("cgnet_cam_iou", "CGNet CAM"),
    ("crf_seed_iou", "CRF seeds"),
    ("pseudo_label_iou", "pseudo labels"),
    ("deeplab_val_iou", "DeepLab (pseudo)"),
    ("fully_supervised_val_iou", "DeepLab (GT)"),
)
METRIC_ROWS = (
    ("oc_cam_miou", "ordinary classifier CAM (train)"),
    ("cgnet_cam_miou", "CGNet CAM (train)"),
    ("crf_seed_miou", "CRF seeds, decided pixels (train)"),
    ("pseudo_label_miou", "pseudo labels (train)"),
    ("deeplab_val_miou", "DeepLab on pseudo labels (val)"),
    ("fully_supervised_val_miou", "DeepLab on ground truth (val)"),
)


def _class_ap_table(summary: dict) -> list[str]:
    """Per-class classification AP of the CAM networks on the scoring split: a class a network has not learned
    (AP near its frequency) has a CAM of noise, whatever its IoU looks like."""
    columns = [(key, label) for key, label in (("oc_cls_ap", "OC AP"), ("cgnet_cls_ap", "CGNet AP")) if key in summary]
    if not columns:
        return []
    names = list(summary[columns[0][0]])
    lines = ["", "## Classification AP (scoring split)", ""]
    lines += ["| class | " + " | ".join(label for _, label in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name in names:
        values = [summary[key].get(name) for key, _ in columns]
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{100 * v:.1f}" for v in values) + " |")
    return lines


def write_report(run_dir: str | Path, source: SegmentationSource, num_images: int = 4) -> Path:
    """Write ``report.md`` and its PNGs into ``run_dir``; returns the report's path."""
    import matplotlib

    matplotlib.use("Agg")
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    lines = [f"# {summary.get('name', run_dir.name)}", ""]
    facts = ("dataset", "seed", "classifier_backbone", "cgnet_backbone", "masking_depth", "config_hash")
    lines += [f"- {k}: `{summary[k]}`" for k in facts if k in summary] + [""]
    lines += ["| stage | mIoU (%) |", "|---|---|"]
    lines += [f"| {label} | {summary[key]:.2f} |" for key, label in METRIC_ROWS if summary.get(key) is not None]
    times = summary.get("stage_seconds") or {}
    if times:
        lines += ["", "| stage | seconds |", "|---|---|"] + [f"| {s} | {t} |" for s, t in times.items() if t]
    lines += _class_ap_table(summary)
    if _plot_iou(run_dir / "iou_per_class.png", summary):
        lines += ["", "## Per-class IoU", "", "![per-class IoU](iou_per_class.png)"]
    threshold = summary.get("cgnet_cam_threshold")
    if _plot_train_overlays(run_dir / "overlays_train.png", run_dir, source, threshold, num_images):
        lines += ["", "## Scoring images", "", "image | ground truth | CGNet CAM | CRF seeds | pseudo label", "",
                  "![train overlays](overlays_train.png)"]  # fmt: skip
    if _plot_val_overlays(run_dir / "overlays_val.png", run_dir, source, num_images):
        lines += ["", "## Validation images", "", "image | ground truth | DeepLab (pseudo) | DeepLab (GT)", "",
                  "![val overlays](overlays_val.png)"]  # fmt: skip
    path = run_dir / "report.md"
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    return path


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _plot_iou(path: Path, summary: dict) -> bool:
    import matplotlib.pyplot as plt

    series = [(label, summary[key]) for key, label in IOU_KEYS if isinstance(summary.get(key), dict)]
    if not series:
        return False
    classes = list(series[0][1])
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(classes) * len(series) / 3), 3.5))
    width = 0.8 / len(series)
    for i, (label, iou) in enumerate(series):
        values = [_percent(iou.get(name)) for name in classes]
        ax.bar(np.arange(len(classes)) + (i - (len(series) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(np.arange(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=3)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return True


def _percent(value: float | None) -> float:
    """Per-class IoUs are stored as fractions in the summary (every stage); the plot shows percentages."""
    return float("nan") if value is None else value * 100


def _colour(mask: np.ndarray) -> np.ndarray:
    palette = voc_palette()
    return palette[np.where(mask == IGNORE_INDEX, 255, mask)]


def _grid(path: Path, rows: list[list[np.ndarray]]) -> None:
    import matplotlib.pyplot as plt

    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2 * cols, 2 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(cols):
            axes[r][c].axis("off")
            if c < len(row):
                axes[r][c].imshow(row[c])
    fig.tight_layout()
    _save(fig, path)


def _plot_train_overlays(
    path: Path, run_dir: Path, source: SegmentationSource, threshold: float | None, num_images: int
) -> bool:
    from caef.cam_files import load_cams
    from caef.stages.label_scoring import seed_map, threshold_cam_file

    split = "train"
    if split not in source.splits or not source.has_masks(split):
        return False
    ids = [i for i in source.split_ids(split) if (run_dir / "pseudo" / f"{i}.png").is_file()][:num_images]
    if not ids:
        return False
    rows = []
    for image_id in ids:
        truth = source.read_mask(image_id, split)
        row = [source.read_image(image_id), _colour(truth)]
        cam_file = run_dir / "cams" / "cgnet" / f"{image_id}.npz"
        if cam_file.is_file() and threshold is not None:
            cams, classes = load_cams(cam_file, source.num_classes)
            row.append(_colour(threshold_cam_file(cams, classes, threshold)))
        low, high = (run_dir / "seeds" / k / f"{image_id}.png" for k in ("low", "high"))
        if low.is_file() and high.is_file():
            row.append(_colour(seed_map(read_mask(low, source.num_classes), read_mask(high, source.num_classes))))
        row.append(_colour(read_mask(run_dir / "pseudo" / f"{image_id}.png", source.num_classes)))
        rows.append(row)
    _grid(path, rows)
    return True


def _plot_val_overlays(path: Path, run_dir: Path, source: SegmentationSource, num_images: int) -> bool:
    import torch

    from caef.data.transforms import eval_transform
    from caef.stages.deeplab import DeepLabModule

    checkpoints = [run_dir / s / "last.ckpt" for s in ("deeplab", "fully_supervised")]
    checkpoints = [c for c in checkpoints if c.is_file()]
    if not checkpoints or "val" not in source.splits or not source.has_masks("val"):
        return False
    models = []
    for checkpoint in checkpoints:
        module = DeepLabModule.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False)
        models.append(module.eval())
    transform = eval_transform()
    rows = []
    for image_id in source.split_ids("val")[:num_images]:
        image = source.read_image(image_id)
        row = [image, _colour(source.read_mask(image_id, "val"))]
        tensor = transform(image=image)["image"][None]
        with torch.no_grad():
            for model in models:
                logits = torch.nn.functional.interpolate(model(tensor), size=image.shape[:2], mode="bilinear")
                row.append(_colour(logits.argmax(1)[0].numpy().astype(np.uint8)))
        rows.append(row)
    _grid(path, rows)
    return True
