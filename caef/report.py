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
from caef.reported_metrics import evaluation_of
from caef.run_layout import CAM_DIR, CHECKPOINT, PSEUDO_DIR, SEED_DIR, SUMMARY, layout_path

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
#: (summary key prefix of a DeepLab's diagnostics, label)
DIAGNOSTIC_ROWS = (("deeplab_val", "on pseudo labels"), ("fully_supervised_val", "on ground truth"))


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


def _diagnostics_table(summary: dict) -> list[str]:
    """Where each DeepLab's val errors are (caef.stages.deeplab): localisation or recognition."""
    rows = [(label, summary.get(f"{key}_diagnostics") or {}) for key, label in DIAGNOSTIC_ROWS]
    rows = [(label, d) for label, d in rows if d]
    if not rows:
        return []
    cells = ("missed_foreground", "wrong_class", "miou_given_classes", "miou_without_crf")
    lines = [
        "",
        "| DeepLab (val) | foreground missed (%) | foreground, wrong class (%) | mIoU given each image's classes "
        "| mIoU without the CRF |",
    ]
    lines.append("|---|---|---|---|---|")
    return lines + [
        f"| {label} | " + " | ".join(f"{d[c]:.2f}" if c in d else "" for c in cells) + " |" for label, d in rows
    ]


def _evaluated(label: str, evaluation: str | None) -> str:
    """A DeepLab row's label with its evaluation: ``DeepLab on ground truth (val; flip, dense CRF)``."""
    return label if evaluation is None else f"{label[:-1]}; {evaluation})"


def write_report(run_dir: str | Path, source: SegmentationSource, num_images: int = 4) -> Path:
    """Write ``report.md`` and its PNGs into ``run_dir``; returns the report's path."""
    import matplotlib

    matplotlib.use("Agg")
    run_dir = Path(run_dir)
    summary_file = run_dir / SUMMARY
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    lines = [f"# {summary.get('name', run_dir.name)}", ""]
    facts = ("dataset", "seed", "classifier_backbone", "cgnet_backbone", "masking_depth", "config_hash")
    lines += [f"- {k}: `{summary[k]}`" for k in facts if k in summary] + [""]
    lines += ["| stage | mIoU (%) |", "|---|---|"]
    lines += [
        f"| {_evaluated(label, evaluation_of(summary, key))} | {summary[key]:.2f} |"
        for key, label in METRIC_ROWS
        if summary.get(key) is not None
    ]
    lines += _diagnostics_table(summary)
    times, threads = summary.get("stage_seconds") or {}, summary.get("stage_threads") or {}
    if times:
        lines += ["", "| stage | seconds | CPU threads |", "|---|---|---|"]
        lines += [f"| {s} | {t} | {threads.get(s) or ''} |" for s, t in times.items() if t]
    lines += _class_ap_table(summary)
    if _plot_iou(run_dir / "iou_per_class.png", summary, source.class_names):
        lines += ["", "## Per-class IoU", "", "![per-class IoU](iou_per_class.png)"]
    threshold = summary.get("cgnet_cam_threshold")
    if _plot_train_overlays(run_dir / "overlays_train.png", run_dir, source, threshold, num_images):
        lines += ["", "## Scoring images", "", "![train overlays](overlays_train.png)"]
    if _plot_val_overlays(run_dir / "overlays_val.png", run_dir, source, num_images):
        lines += ["", "## Validation images", "", "![val overlays](overlays_val.png)"]
    path = run_dir / "report.md"
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    return path


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _plot_iou(path: Path, summary: dict, class_names: list[str] | tuple[str, ...] = ()) -> bool:
    import matplotlib.pyplot as plt

    series = [(label, summary[key]) for key, label in IOU_KEYS if isinstance(summary.get(key), dict)]
    if not series:
        return False
    classes = list(series[0][1])
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(classes) * len(series) / 3), 3.8))
    width = 0.8 / len(series)
    for i, (label, iou) in enumerate(series):
        values = [_percent(iou.get(name)) for name in classes]
        ax.bar(np.arange(len(classes)) + (i - (len(series) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(np.arange(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    palette, names = voc_palette(), list(class_names)
    for name, tick in zip(classes, ax.get_xticklabels()):
        if name in names:  # each class name on its colour in the overlays, so the figures read together
            tick.set_bbox({"facecolor": palette[names.index(name)] / 255, "edgecolor": "none", "alpha": 0.5, "pad": 1})
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Per-class IoU by stage (DeepLab: val; the others: the scoring split)", fontsize=8)
    ax.legend(fontsize=7, ncol=3)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return True


def _percent(value: float | None) -> float:
    """Per-class IoUs are stored as fractions in the summary (every stage); the plot shows percentages."""
    return float("nan") if value is None else value * 100


def label_grid(columns: list[str], rows: list[tuple[str, list]], class_names: list[str] | tuple[str, ...]):
    """A figure of one row per image: its id on the left, one titled column per panel, and a legend of the colour of
    every class that appears in the label maps (and of ``ignore`` / unsure pixels where there are any).

    Each row is ``(image id, panels)``: the RGB image first, then (H, W) label maps (class index, 255 = ignore), one
    per column; ``None`` marks a panel whose file is missing, drawn as such, so a column never shifts."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    palette = voc_palette()
    present: set[int] = set()
    for image_id, panels in rows:
        if len(panels) != len(columns):
            raise ValueError(f"{image_id}: {len(panels)} panels for {len(columns)} columns {columns}")
        for panel in panels[1:]:
            if panel is not None:
                present.update(np.unique(panel).tolist())
    fig, axes = plt.subplots(
        len(rows), len(columns), figsize=(2 * len(columns), 2 * len(rows) + 0.8), squeeze=False, layout="constrained"
    )
    for r, (image_id, panels) in enumerate(rows):
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if panel is None:
                ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes, color="grey")
            else:
                ax.imshow(panel if c == 0 else palette[panel])
            if r == 0:
                ax.set_title(columns[c], fontsize=9)
        axes[r][0].set_ylabel(image_id, fontsize=8)
    names = list(class_names)
    handles = [
        Patch(facecolor=palette[index] / 255, edgecolor="black", linewidth=0.3, label=names[index])
        for index in sorted(present)
        if index < len(names)
    ]
    if IGNORE_INDEX in present:
        handles.append(Patch(facecolor=palette[IGNORE_INDEX] / 255, edgecolor="black", linewidth=0.3,
                             label="ignore / unsure"))  # fmt: skip
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False)
    return fig


def _plot_train_overlays(
    path: Path, run_dir: Path, source: SegmentationSource, threshold: float | None, num_images: int
) -> bool:
    from caef.cam_files import load_cams
    from caef.stages.label_scoring import seed_map, threshold_cam_file

    split = "train"
    if split not in source.splits or not source.has_masks(split):
        return False
    ids = [i for i in source.split_ids(split) if (run_dir / PSEUDO_DIR / f"{i}.png").is_file()][:num_images]
    if not ids:
        return False
    cam_title = "CGNet CAM" if threshold is None else f"CGNet CAM (bg threshold {threshold:.2f})"
    columns = ["image", "ground truth", cam_title, "CRF seeds", "pseudo label"]
    rows = []
    for image_id in ids:
        cam, seeds = None, None
        cam_file = run_dir / layout_path(CAM_DIR, "cgnet") / f"{image_id}.npz"
        if cam_file.is_file() and threshold is not None:
            cams, classes = load_cams(cam_file, source.num_classes, label=source.label_of(image_id))
            cam = threshold_cam_file(cams, classes, threshold)
        low, high = (run_dir / SEED_DIR / k / f"{image_id}.png" for k in ("low", "high"))
        if low.is_file() and high.is_file():
            seeds = seed_map(read_mask(low, source.num_classes), read_mask(high, source.num_classes))
        pseudo = read_mask(run_dir / PSEUDO_DIR / f"{image_id}.png", source.num_classes)
        rows.append((image_id, [source.read_image(image_id), source.read_mask(image_id, split), cam, seeds, pseudo]))
    _save(label_grid(columns, rows, source.class_names), path)
    return True


def _plot_val_overlays(path: Path, run_dir: Path, source: SegmentationSource, num_images: int) -> bool:
    import torch

    from caef.data.transforms import eval_transform
    from caef.stages.deeplab import DeepLabModule

    titles = {"deeplab": "DeepLab (pseudo labels)", "fully_supervised": "DeepLab (ground truth)"}
    checkpoints = [(title, run_dir / layout_path(CHECKPOINT, stage)) for stage, title in titles.items()]
    checkpoints = [(title, c) for title, c in checkpoints if c.is_file()]
    if not checkpoints or "val" not in source.splits or not source.has_masks("val"):
        return False
    models = []
    for _, checkpoint in checkpoints:
        module = DeepLabModule.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False)
        models.append(module.eval())
    transform = eval_transform()
    rows = []
    for image_id in source.split_ids("val")[:num_images]:
        image = source.read_image(image_id)
        panels = [image, source.read_mask(image_id, "val")]
        tensor = transform(image=image)["image"][None]
        with torch.no_grad():
            for model in models:
                logits = torch.nn.functional.interpolate(model(tensor), size=image.shape[:2], mode="bilinear")
                panels.append(logits.argmax(1)[0].numpy().astype(np.uint8))
        rows.append((image_id, panels))
    columns = ["image", "ground truth", *(title for title, _ in checkpoints)]
    _save(label_grid(columns, rows, source.class_names), path)
    return True
