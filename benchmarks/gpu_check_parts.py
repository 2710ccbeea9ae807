"""The four parts of ``make gpu-check`` (see :mod:`benchmarks.gpu_check`): each fills its entry of the record,
saving after every unit of work, and stops starting new work once the time budget says so."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import CONFIGS, config_dict, cpu_count


def _error(exc: BaseException) -> str:
    from benchmarks.bench import error_text

    return error_text(exc)


def all_cores_rate(crf: dict[str, Any]) -> float | None:
    """Images/s of the CRF pool on all cores (the row ``caef crf`` runs with by default)."""
    workers = crf.get("workers") or {}
    row = workers.get(str(crf.get("cores"))) or (workers[max(workers, key=int)] if workers else None)
    return row["images_per_s"] if row else None


def coco_crf(cuda: bool) -> dict[str, Any]:
    """CRF seeds of COCO-size images (640x480) on all cores, for the coco_full projection (CUDA form only). Run
    first, before CUDA is initialised, as its process pool forks."""
    if not cuda:
        return {}
    from benchmarks.refinement import run_crf

    config = replace(CONFIGS["full"], image_height=480, image_width=640, crf_images_per_worker=2, crf_repeats=1)
    print("caef gpu-check: CRF seeds at 640x480 (for the coco_full projection) ...", flush=True)
    try:
        result = run_crf(config, worker_counts=[cpu_count()])
    except Exception as exc:  # the projection then says the CRF rate is missing
        return {"error": _error(exc)}
    return {**result, "images_per_s": all_cores_rate(result)}


def bench_crf_rate(record: dict[str, Any]) -> float | None:
    crf = (record["parts"]["bench"].get("results") or {}).get("crf")
    return all_cores_rate(crf) if crf else None


def run_bench(part: dict, form: str, device: torch.device, budget, record: dict, save: Callable[[], None]) -> None:
    """Part 1: ``make bench`` (the full configuration on CUDA, the small one on CPU), saved after each benchmark."""
    from benchmarks import bench

    config = CONFIGS[form]
    part["config"] = config_dict(config)
    started: dict[str, float] = {}

    def before(name: str) -> bool:
        if not budget.allows():
            part["status"] = "partial"
            part["notes"].append(f"{name} skipped: past the part's deadline")
            return False
        started[name] = budget.clock()
        return True

    def after(name: str, results: dict, errors: dict, env: dict) -> None:
        if name in started:
            budget.longest = max(budget.longest, budget.clock() - started.pop(name))
        record["environment"].update(env)
        part["results"], part["errors"] = results, errors
        if env:
            rows = bench.table_rows(results, errors, env, config)
            part["table"], part["table_text"] = rows, bench.format_table(rows)
        save()

    results, errors, env = bench.run_benchmarks(bench.BENCHMARKS, config, device, before=before, after=after)
    after("", results, errors, env)
    if errors:
        part["status"] = "partial"
        part["notes"].extend(f"{name} failed: {text}" for name, text in errors.items())


def run_bf16(part: dict, form: str, device: torch.device) -> None:
    """Part 2: bf16 vs fp32 CAMs of the same weights."""
    from benchmarks.bf16_check import BF16_CONFIGS, run

    part["result"] = run(BF16_CONFIGS[form], device)


def run_stages(
    part: dict,
    experiment: Path,
    form: str,
    device: torch.device,
    budget,
    save: Callable[[], None],
    crf_rate: float | None,
    crf: dict | None = None,
    variants: list[str] | None = None,
) -> None:
    """Parts 3 and 4: every kind of GPU work of the experiment's stages, in each variant (default: both on CUDA,
    fp32 on CPU), then the projection of each variant (full form only)."""
    from benchmarks import stage_throughput as st
    from benchmarks.protocol import load_protocol, project

    protocol = load_protocol(experiment)
    scale = st.FULL if form == "full" else st.SMALL
    variants = variants or (list(st.VARIANTS) if device.type == "cuda" else ["fp32"])
    part.update(protocol=protocol.as_dict(), scale=scale.name, measured={})
    if crf:
        part["crf"] = crf
    if "bf16_cl" not in variants:
        part["notes"].append("bf16 + channels_last not timed on CPU (caef trains and infers in fp32 there)")
    for kind, sizes in protocol.sizes.items():
        entry = part["measured"][kind] = {"sizes": st.measured_sizes(sizes, protocol.image_size, scale)}
        for variant in variants:
            if not budget.allows():
                entry[f"error_{variant}"] = f"{variant} skipped: past the part's deadline"
                part["status"] = "partial"
                continue
            print(f"  {kind} {variant} ...", flush=True)
            try:
                entry[variant] = budget.timed(
                    lambda k=kind, s=entry["sizes"], v=variant: st.measure(k, s, protocol.num_classes, device, v, scale)
                )
            except Exception as exc:  # an OOM or a failing variant must not lose the rest
                entry[f"error_{variant}"] = f"{variant}: {_error(exc)}"
                part["status"] = "partial"
            save()
    if form != "full":
        part["notes"].append(
            "projection not computed: the CPU form measures small sizes (ResNet-38 width 1/16, crops and images "
            "/4), not the protocol's"
        )
        return
    part["crf_images_per_s"] = crf_rate
    part["projection"] = {}
    for variant in variants:
        rates = {kind: (entry.get(variant) or {}).get("images_per_s") for kind, entry in part["measured"].items()}
        part["projection"][variant] = project(protocol, {**rates, "crf": crf_rate})
    missing = sorted({k for p in part["projection"].values() for k in p["missing_kinds"]})
    if missing:
        part["notes"].append(f"no rate for {', '.join(missing)}: the affected stages and the total are n/a")
    part["notes"].append(
        f"crf: CPU process pool on all {cpu_count()} cores, the same in both columns; data loading, checkpoint "
        "writes and pseudo-label scoring not counted"
    )
