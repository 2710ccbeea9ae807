"""The bookkeeping of ``make gpu-check``, apart from any device: the results record (its schema and atomic
write), the goals it is judged against, and the printed tables. Pure functions, so they are tested without a GPU.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from benchmarks.protocol import format_duration

SCHEMA = "caef-gpu-check/1"
PARTS = ("bench", "bf16", "voc_stages", "coco_stages")
PART_TITLES = {
    "bench": "1. make bench (caef vs the reference recipe)",
    "bf16": "2. bf16 vs fp32 CAMs (same weights)",
    "voc_stages": "3. voc_full stage throughput and projected time",
    "coco_stages": "4. coco_full stage throughput and projected time",
}
STATUSES = ("pending", "done", "partial", "skipped", "error")
RECORD_KEYS = ("schema", "timestamp", "command", "form", "budget_s", "elapsed_s", "environment", "parts", "goals")
PART_KEYS = ("status", "seconds", "notes")
VARIANT_LABELS = {"fp32": "as configured (fp32)", "bf16_cl": "bf16 + channels_last"}
#: the goals: (key, description, target, comparison)
GOALS = (
    ("cgnet_step_speedup", "CGNet train step, caef / reference images/s", 3.0, ">="),
    ("msf_speedup", "multi-scale + flip CAMs, caef / per-variant loop images/s", 4.0, ">="),
    ("cgnet_step_mfu", "CGNet train step MFU (share of bf16 dense peak)", 0.40, ">="),
    ("bf16_max_abs_diff", "bf16 CAMs, max |bf16 - fp32| of the normalised maps", 1e-2, "<="),
    ("bf16_miou_delta", "bf16 CAM mIoU, |bf16 - fp32| in points", 0.1, "<="),
)


def new_record(command: str, form: str, budget_s: float, environment: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "form": form,  # "full" (CUDA, the real sizes) or "small" (the CPU form)
        "budget_s": budget_s,
        "elapsed_s": 0.0,
        "environment": environment,
        "parts": {name: {"status": "pending", "seconds": None, "notes": []} for name in PARTS},
        "goals": [],
    }


def check_record(record: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first key missing from (or malformed in) a gpu-check record."""
    for key in RECORD_KEYS:
        if key not in record:
            raise ValueError(f"gpu-check record: missing key {key!r}")
    if record["schema"] != SCHEMA:
        raise ValueError(f"gpu-check record: schema {record['schema']!r}, expected {SCHEMA!r}")
    for name in PARTS:
        part = record["parts"].get(name)
        if part is None:
            raise ValueError(f"gpu-check record: missing part {name!r}")
        for key in PART_KEYS:
            if key not in part:
                raise ValueError(f"gpu-check record: part {name!r} misses key {key!r}")
        if part["status"] not in STATUSES:
            raise ValueError(f"gpu-check record: part {name!r} has status {part['status']!r}, not one of {STATUSES}")


def save_record(path: str | Path | None, record: dict[str, Any]) -> None:
    """Write the record atomically (temp file beside it, then rename): a cut-off run leaves the last complete
    state. ``path`` None: nothing is written (the CPU form without ``--out``)."""
    if path is None:
        return
    from caef.io import write_json

    check_record(record)
    write_json(path, record)


# -- goals -----------------------------------------------------------------------------------------------------
def _dig(mapping: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, dict) or mapping.get(key) is None:
            return None
        mapping = mapping[key]
    return mapping


def goal_values(record: dict[str, Any]) -> dict[str, tuple[float | None, str]]:
    """Measured value and where it comes from, per goal key (None where the part did not run)."""
    bench = _dig(record, "parts", "bench", "results") or {}
    msf_bf16 = _dig(bench, "msf", "caef_bf16", "speedup")
    bf16 = _dig(record, "parts", "bf16", "result") or {}
    return {
        "cgnet_step_speedup": (_dig(bench, "train", "speedup"), "bench (a)"),
        "msf_speedup": (
            (msf_bf16, "bench (b), bf16")
            if msf_bf16 is not None
            else (_dig(bench, "msf", "caef_fp32", "speedup"), "bench (b), fp32")
        ),  # fmt: skip
        "cgnet_step_mfu": (_dig(bench, "train", "mfu"), "bench (f)"),
        "bf16_max_abs_diff": (bf16.get("max_abs_diff"), "part 2"),
        "bf16_miou_delta": (bf16.get("miou_delta_points"), "part 2"),
    }


def evaluate_goals(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal with its measured value and whether it is met. Only the full form (the real sizes on CUDA)
    can meet or miss a goal; the CPU form reports its values with ``met: None``."""
    values = goal_values(record)
    out = []
    for key, description, target, op in GOALS:
        value, source = values[key]
        met = None
        if value is not None and record["form"] == "full":
            met = value >= target if op == ">=" else value <= target
        out.append({"goal": key, "description": description, "target": f"{op} {target:g}", "measured": value,
                    "source": source, "met": met})  # fmt: skip
    return out


# -- tables ----------------------------------------------------------------------------------------------------
def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Plain text columns: the first left-aligned, the others right-aligned, the last left-aligned (notes)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, None, *rows]:
        if row is None:
            lines.append("  ".join("-" * w for w in widths))
            continue
        cells = [str(c).ljust(w) if i in (0, len(row) - 1) else str(c).rjust(w) for i, (c, w) in
                 enumerate(zip(row, widths))]  # fmt: skip
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _sizes_text(sizes: dict[str, Any]) -> str:
    where = f"crop {sizes['crop']}" if "crop" in sizes else f"image {sizes['image'][1]}x{sizes['image'][0]}"
    width = sizes.get("backbone_options", {}).get("width")
    return f"{sizes.get('backbone')}{f' w{width:g}' if width else ''}, batch {sizes['batch']}, {where}"


def stage_rows(part: dict[str, Any]) -> list[list[str]]:
    rows = []
    for kind, entry in (part.get("measured") or {}).items():
        fp32, fast = entry.get("fp32") or {}, entry.get("bf16_cl") or {}
        ratio = (fast["images_per_s"] / fp32["images_per_s"]) if fp32.get("images_per_s") and fast.get(
            "images_per_s") else None  # fmt: skip
        mem = "/".join(_num(v.get("peak_memory_gib"), 2) for v in (fp32, fast))
        notes = "; ".join(str(entry[k]) for k in ("error_fp32", "error_bf16_cl", "note") if entry.get(k))
        rows.append([kind, _num(fp32.get("images_per_s")), _num(fast.get("images_per_s")),
                     "n/a" if ratio is None else f"{ratio:.2f}x", mem, _sizes_text(entry["sizes"]) +
                     (f"; {notes}" if notes else "")])  # fmt: skip
    return rows


def projection_rows(part: dict[str, Any]) -> list[list[str]]:
    projections = part.get("projection") or {}
    if not projections:
        return []
    variants = [v for v in VARIANT_LABELS if v in projections]
    rows = []
    first = projections[variants[0]]
    for index, stage in enumerate(first["stages"]):
        images = sum(p["images"] for p in stage["phases"])
        what = ", ".join(f"{p['kind']} {p['what']}" for p in stage["phases"])
        rows.append([stage["stage"], str(images)] + [
            format_duration(projections[v]["stages"][index]["seconds"]) for v in variants] + [what])  # fmt: skip
    rows.append(["total", ""] + [format_duration(projections[v]["total_seconds"]) for v in variants] +
                ["one GPU; data loading, checkpoints and start-up not counted"])  # fmt: skip
    return rows


def goal_rows(goals: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for g in goals:
        value = g["measured"]
        shown = "n/a" if value is None else (f"{100 * value:.1f} %" if g["goal"].endswith("mfu") else f"{value:.3g}")
        met = {True: "met", False: "NOT met", None: "n/a"}[g["met"]]
        rows.append([g["description"], g["target"], shown, met, g["source"]])
    return rows


def render(record: dict[str, Any]) -> str:
    """The whole printed report: one block per part (or its skip note), then the goals."""
    blocks = [f"caef gpu-check ({record['form']} form) on {record['environment'].get('device_name', '?')}, "
              f"{record['elapsed_s']:.0f} s of a {record['budget_s']:.0f} s budget"]  # fmt: skip
    for name in PARTS:
        part = record["parts"][name]
        lines = [f"\n{PART_TITLES[name]} [{part['status']}" + (f", {part['seconds']:.0f} s]" if part["seconds"]
                                                               is not None else "]")]  # fmt: skip
        if name == "bench" and part.get("table_text"):
            lines.append(f"configuration {part['config']['name']} (benchmarks/README.md)")
            lines.append(part["table_text"])
        if name == "bf16" and part.get("result"):
            r = part["result"]
            same = f"bf16 at fp32's threshold {r['miou_bf16_at_fp32_threshold']:.2f}"
            mean = f"max |diff| (mean {r['mean_abs_diff']:.1e})"
            lines.append(format_table(
                ["", "fp32", "bf16", "difference", "notes"],
                [["CAM mIoU (best threshold)", _num(r["miou_fp32"], 2), _num(r["miou_bf16"], 2),
                  _num(r["miou_delta_points"], 3), same],
                 ["normalised CAMs", "", "", f"{r['max_abs_diff']:.1e}", mean]],
            ))  # fmt: skip
            lines.append(r["verdict"])
        if name.endswith("_stages"):
            rows = stage_rows(part)
            if rows:
                lines.append(format_table(["kind", "fp32 img/s", "bf16+cl img/s", "ratio", "peak GiB", "sizes"], rows))
            proj = projection_rows(part)
            if proj:
                labels = [VARIANT_LABELS[v] for v in VARIANT_LABELS if v in part["projection"]]
                lines.append("")
                lines.append(format_table(["stage", "images", *labels, "work"], proj))
        lines.extend(f"  note: {note}" for note in part["notes"])
        blocks.append("\n".join(lines))
    blocks.append("\ngoals\n" + format_table(["goal", "target", "measured", "met", "from"], goal_rows(record["goals"])))
    return "\n".join(blocks)
