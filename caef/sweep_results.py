"""A finished sweep's comparison: each metric's mean and spread over seeds per parameter value, the OC as reference.

``caef sweep --local`` writes it (``results.json``, ``table.md``, ``<metric>.png``) and ``caef dashboard`` builds its
W&B report from the same numbers, so the local tables and the dashboard show one comparison: per-seed points, the
mean and sample standard deviation per value of the swept parameter(s) (seed excluded), and the ordinary
classifier's CAM mIoU (which every point of a seed shares) as the reference line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from caef.errors import CaefError
from caef.io import atomic_path, write_json
from caef.reported_metrics import reported_metrics

#: metrics compared in the tables (summary keys), in pipeline order
METRICS = tuple(m for m in reported_metrics() if m.endswith("_miou"))
#: the reference every point is compared with: the ordinary classifier's CAMs
REFERENCE = "oc_cam_miou"
#: a parameter the comparison averages over instead of comparing
ACROSS = "seed"


def swept(results: Sequence[dict]) -> list[str]:
    """The compared parameters: those of the points, seed excluded."""
    return [name for name in (results[0]["point"] if results else {}) if name != ACROSS]


def stats(values: Sequence[float | None]) -> dict[str, Any]:
    """n, mean, sample standard deviation (0 for one value), min and max of the values that exist."""
    xs = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not xs:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {"n": len(xs), "mean": round(mean, 4), "std": round(std, 4), "min": min(xs), "max": max(xs)}


def aggregate(results: Sequence[dict], metrics: Sequence[str] = METRICS) -> list[dict]:
    """One row per value of the swept parameters (file order): its points' seeds and each metric's stats."""
    names, groups = swept(results), {}
    for r in results:
        key = tuple(_hashable(r["point"][n]) for n in names)
        groups.setdefault(key, {"params": {n: r["point"][n] for n in names}, "results": []})["results"].append(r)
    return [
        {"params": g["params"], "seeds": [r.get("seed") for r in g["results"]]}
        | {m: stats([r.get(m) for r in g["results"]]) for m in metrics}
        for g in groups.values()
    ]


def reference(results: Sequence[dict]) -> dict[str, Any]:
    """The OC's CAM mIoU over the sweep's seeds (each seed once: its points share one classifier)."""
    per_seed = {r.get("seed"): r.get(REFERENCE) for r in results if r.get(REFERENCE) is not None}
    return {"metric": REFERENCE} | stats(list(per_seed.values()))


def per_class_key(metric: str) -> str | None:
    """``cgnet_cam_miou`` -> ``cgnet_cam_iou``: the summary's per-class IoU (0-1) behind an mIoU."""
    return metric.removesuffix("_miou") + "_iou" if metric.endswith("_miou") else None


def per_class(results: Sequence[dict], metric: str) -> list[dict]:
    """Per value of the swept parameters: each class's IoU (0-1), mean over the seeds that defined it."""
    key, names, rows = per_class_key(metric), swept(results), {}
    for r in results:
        if key and isinstance(r.get(key), dict):
            row = rows.setdefault(tuple(_hashable(r["point"][n]) for n in names), {
                "params": {n: r["point"][n] for n in names}, "values": {}})  # fmt: skip
            for name, value in r[key].items():
                row["values"].setdefault(name, []).append(value)
    return [{"params": row["params"], "iou": {c: stats(v)["mean"] for c, v in row["values"].items()}}
            for row in rows.values()]  # fmt: skip


def metric_of(sweep: dict) -> str:
    return ((sweep.get("metric") or {}).get("name")) or "cgnet_cam_miou"


def write_results(out: Path, sweep_name: str, sweep: dict, results: list[dict]) -> dict:
    """``results.json`` (points, per-value stats, reference), ``table.md`` and the metric's plot, in ``out``."""
    metric = metric_of(sweep)
    metrics = tuple(dict.fromkeys([*METRICS, metric]))
    data = {
        "sweep": sweep_name,
        "metric": metric,
        "parameters": sweep["parameters"],
        "results": results,
        "by_value": aggregate(results, metrics),
        "reference": reference(results),
        "per_class": per_class(results, metric),
    }
    write_json(out / "results.json", data)
    with atomic_path(out / "table.md") as tmp:
        Path(tmp).write_text(format_tables(data) + "\n")
    plot(out / f"{metric}.png", data)
    return data


def load_results(path: str | Path) -> dict:
    """A finished local sweep's ``results.json`` (older files without the stats get them computed)."""
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CaefError(f"sweep results {path} unreadable ({exc}); `caef sweep FILE --local` writes them") from exc
    if not isinstance(data, dict):
        raise CaefError(f"sweep results {path} must hold a JSON object; `caef sweep FILE --local` writes them")
    if not isinstance(data.get("results"), list) or not data["results"]:
        raise CaefError(f"sweep results {path} hold no `results` (a list of points); rerun `caef sweep --local`")
    data.setdefault("metric", "cgnet_cam_miou")
    data.setdefault("by_value", aggregate(data["results"], tuple(dict.fromkeys([*METRICS, data["metric"]]))))
    data.setdefault("reference", reference(data["results"]))
    data.setdefault("per_class", per_class(data["results"], data["metric"]))
    return data


def format_table(results: Sequence[dict]) -> str:
    """Every point (one row per run)."""
    names = list(results[0]["point"]) if results else []
    metrics = [m for m in METRICS if any(r.get(m) is not None for r in results)]
    lines = ["| " + " | ".join([*names, *metrics]) + " |", "|" + "---|" * (len(names) + len(metrics))]
    for r in results:
        cells = [_text(r["point"][n]) for n in names] + [_number(r.get(m)) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_tables(data: dict) -> str:
    """The points, then mean ± std over seeds per parameter value with the OC reference."""
    results, rows, ref = data["results"], data["by_value"], data["reference"]
    metrics = [m for m in METRICS if any(row[m]["n"] for row in rows)]
    names = list(rows[0]["params"]) if rows else []
    lines = [format_table(results), "", f"Mean ± std over seeds (n = seeds per value); metric: `{data['metric']}`", ""]
    lines += ["| " + " | ".join([*names, "n", *metrics]) + " |", "|" + "---|" * (len(names) + 1 + len(metrics))]
    for row in rows:
        cells = [_text(row["params"][n]) for n in names] + [str(max(row[m]["n"] for m in metrics) if metrics else 0)]
        cells += [_mean_std(row[m]) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    if ref["n"]:
        lines += ["", f"Reference: ordinary classifier CAM mIoU {_mean_std(ref)} (n = {ref['n']} seeds)"]
    rows = data.get("per_class") or []
    if rows:
        classes = list(rows[0]["iou"])
        lines += ["", f"Per-class `{per_class_key(data['metric'])}` (IoU 0-1, mean over seeds)", ""]
        lines += ["| " + " | ".join([*names, *classes]) + " |", "|" + "---|" * (len(names) + len(classes))]
        for row in rows:
            cells = [_text(row["params"][n]) for n in names]
            cells += ["-" if row["iou"].get(c) is None else f"{row['iou'][c]:.3f}" for c in classes]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(path: Path, data: dict) -> None:
    """The metric against the first swept parameter: each seed's points, the mean with ± std, the OC reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results, rows, metric = data["results"], data["by_value"], data["metric"]
    names = swept(results)
    if not results or not names:
        return
    name = names[0]
    labels = [_text(row["params"][name]) for row in rows]
    numeric = all(isinstance(row["params"][name], (int, float)) and not isinstance(row["params"][name], bool)
                  for row in rows)  # fmt: skip
    xs = [row["params"][name] for row in rows] if numeric else list(range(len(rows)))
    position = dict(zip(labels, xs))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for seed in dict.fromkeys(r.get("seed") for r in results):
        mine = [r for r in results if r.get("seed") == seed and r.get(metric) is not None]
        ax.scatter([position[_text(r["point"][name])] for r in mine], [r[metric] for r in mine], s=14, alpha=0.6,
                   label=f"seed {seed}")  # fmt: skip
    means = [row[metric]["mean"] if row[metric]["mean"] is not None else float("nan") for row in rows]
    stds = [row[metric]["std"] or 0.0 for row in rows]
    ax.errorbar(xs, means, yerr=stds, color="black", marker="o", capsize=3, label="mean ± std")
    for x, y in zip(xs, means):
        ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    if data["reference"]["mean"] is not None:
        ax.axhline(data["reference"]["mean"], color="grey", linestyle="--", label="ordinary classifier")
    ax.set_xticks(xs, labels)
    ax.set_xlabel(name)
    ax.set_ylabel(f"{metric} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _hashable(value: Any) -> Any:
    return repr(value) if isinstance(value, (list, dict)) else value


def _text(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _mean_std(s: dict) -> str:
    return "-" if s["mean"] is None else f"{s['mean']:.2f} ± {s['std']:.2f}"
