"""``make gpu-check``: caef measured on one GPU in under 8 minutes, in one command without arguments.

    make gpu-check                                   # on a CUDA machine: benchmarks/results/cuda-<gpu>.json
    python -m benchmarks.gpu_check --out /tmp/x.json # the CPU form writes only where told

Parts, in this order (each saved as soon as it is done, atomically, so a cut-off run keeps the first ones):
1. ``make bench`` in the full configuration (caef vs the reference recipe: CGNet step, multi-scale CAMs, CRF,
   random walk, peak memory, MFU);
2. bf16 vs fp32 CAMs of the same weights on a generated dataset (max difference, CAM mIoU);
3. every stage of ``experiments/voc_full.yaml`` at its real sizes, as configured (fp32) and with bf16 +
   channels_last, and the projected wall time of each stage and of ``make voc-full`` on this GPU;
4. the same for ``experiments/coco_full.yaml``.
Each part ends by a deadline (cumulative: 180, 225, 345, 450 s of the 450 s budget); work that would run past it
is skipped with a note. Without CUDA the CPU form runs parts 1-3 at small sizes (about a minute) and skips the
GPU-only work (the timed bf16 variants, the projections, part 4); it writes nothing unless ``--out`` is given, so
the committed CPU results stay as they are.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/gpu_check.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks import gpu_check_report as report  # noqa: E402
from benchmarks.common import cpu_count, slugify  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
BUDGET_S = 450.0
DEADLINES = {"bench": 0.4, "bf16": 0.5, "voc_stages": 0.77, "coco_stages": 1.0}  # cumulative fractions of the budget
FIRST_UNIT_ESTIMATE_S = 5.0


class Budget:
    """Elapsed time against per-part deadlines (fractions of the whole, cumulative so an early finish carries
    over). ``allows()`` is False when the next unit of work, estimated as the longest one of the part so far,
    would end past the part's deadline."""

    def __init__(self, total_s: float, deadlines: dict[str, float], clock: Callable[[], float] = time.monotonic):
        self.total_s, self.clock, self.start = total_s, clock, clock()
        self.deadlines = {k: fraction * total_s for k, fraction in deadlines.items()}
        self.part: str | None = None
        self.longest = FIRST_UNIT_ESTIMATE_S * total_s / BUDGET_S

    def elapsed(self) -> float:
        return self.clock() - self.start

    def begin(self, part: str) -> None:
        self.part, self.longest = part, FIRST_UNIT_ESTIMATE_S * self.total_s / BUDGET_S

    def left(self) -> float:
        return min(self.deadlines[self.part], self.total_s) - self.elapsed()

    def allows(self) -> bool:
        return self.left() >= self.longest

    def timed(self, fn: Callable[[], Any]) -> Any:
        start = self.clock()
        try:
            return fn()
        finally:
            self.longest = max(self.longest, self.clock() - start)


def nvidia_smi() -> dict[str, str]:
    """GPU name and driver from ``nvidia-smi`` (without initialising CUDA in this process); {} if unavailable."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip().splitlines()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {}
    name, _, driver = out[0].partition(",") if out else ("", "", "")
    return {"gpu_name": name.strip(), "driver": driver.strip()} if name else {}


def base_environment(cuda: bool) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        caef_version = version("caef")
    except PackageNotFoundError:
        caef_version = None
    env = {"torch": torch.__version__, "torch_cuda_build": torch.version.cuda, "caef": caef_version,
           "cpu_cores": cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}  # fmt: skip
    if cuda:
        env.update(nvidia_smi())
    return env


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="results JSON (default on CUDA: benchmarks/results/cuda-<gpu>.json; "
                        "on CPU: none, the table is printed only)")  # fmt: skip
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help=f"time budget (default {BUDGET_S:g} s)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()  # does not initialise CUDA (the CRF pool forks first)
    device = torch.device("cuda" if cuda else "cpu")
    form = "full" if cuda else "small"
    command = " ".join(shlex.quote(a) for a in getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    env = base_environment(cuda)
    record = report.new_record(command, form, args.budget_s, env)
    out = args.out
    if out is None and cuda and env.get("gpu_name"):
        out = RESULTS_DIR / f"cuda-{slugify(env['gpu_name'])}.json"
    budget = Budget(args.budget_s, DEADLINES)
    print(f"caef gpu-check: {form} form on {device.type}, budget {args.budget_s:.0f} s"
          + ("" if cuda else " (no CUDA: the CPU form; the GPU part is skipped)"), flush=True)  # fmt: skip

    def save() -> None:
        nonlocal out
        record["elapsed_s"] = budget.elapsed()
        record["goals"] = report.evaluate_goals(record)
        if out is None and cuda and record["environment"].get("device_name"):
            out = RESULTS_DIR / f"cuda-{slugify(record['environment']['device_name'])}.json"
        report.save_record(out, record)

    from benchmarks import gpu_check_parts as parts

    coco_crf = parts.coco_crf(cuda)  # before anything initialises CUDA: the CRF pool forks
    steps = (
        ("bench", lambda part: parts.run_bench(part, form, device, budget, record, save)),
        ("bf16", lambda part: parts.run_bf16(part, form, device)),
        ("voc_stages", lambda part: parts.run_stages(part, EXPERIMENTS / "voc_full.yaml", form, device, budget,
                                                     save, crf_rate=parts.bench_crf_rate(record))),
        ("coco_stages", lambda part: parts.run_stages(part, EXPERIMENTS / "coco_full.yaml", form, device, budget,
                                                      save, crf_rate=coco_crf.get("images_per_s"), crf=coco_crf)),
    )  # fmt: skip
    for name, fn in steps:
        part = record["parts"][name]
        budget.begin(name)
        if form == "small" and name == "coco_stages":
            part["status"] = "skipped"
            part["notes"].append("GPU part: the coco_full projection needs CUDA and the real sizes")
            continue
        if not budget.allows():
            part["status"] = "skipped"
            part["notes"].append(f"skipped: {budget.elapsed():.0f} s elapsed, past this part's deadline")
            save()
            continue
        print(f"\n{report.PART_TITLES[name]}", flush=True)
        start = time.monotonic()
        try:
            fn(part)
            if part["status"] == "pending":
                part["status"] = "done"
        except Exception as exc:  # a failing part must not lose the others
            traceback.print_exc()
            part["status"] = "error"
            part["notes"].append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
        part["seconds"] = time.monotonic() - start
        save()
    save()
    print()
    print(report.render(record))
    print(f"\nresults: {out}" if out else "\nresults: not written (CPU form; --out PATH writes them)")
    return 1 if any(p["status"] == "error" for p in record["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
