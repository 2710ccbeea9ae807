"""``make demo``: the method end to end on the generated dataset (CPU), then a summary table.

Runs, each stage in its own process (clean W&B runs, no state shared between stages):
ordinary classifier fit -> CGNet fit -> CGNet CAM export; the CAM callbacks have written ``oc_cam_miou`` and
``cgnet_cam_miou`` into ``runs/<name>/summary.json``, to which this adds the seed, backbones and stage times.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from caef.io import update_json

STEPS = (
    ("classifier", "fit", "experiments/classifier/demo.yaml"),
    ("cgnet", "fit", "experiments/cgnet/demo.yaml"),
    ("cgnet", "predict", "experiments/cgnet/demo.yaml"),
)


def run_demo(name: str, seed: int, runs_root: str = "runs", overrides: Sequence[str] = ()) -> dict:
    run_dir = Path(runs_root) / name
    times: dict[str, float] = {}
    for stage, subcommand, config in STEPS:
        args = [sys.executable, "-m", "caef.cli", stage, subcommand, "--config", config, "--run_dir", str(run_dir),
                f"--seed_everything={seed}", *overrides]  # fmt: skip
        if subcommand == "predict":
            args.append(f"--ckpt_path={run_dir / stage / 'last.ckpt'}")
        print(f"\n=== {stage} {subcommand} ===\n{' '.join(args[1:])}", flush=True)
        start = time.perf_counter()
        subprocess.run(args, check=True)
        times[f"{stage}_{subcommand}"] = round(time.perf_counter() - start, 1)
    configs = {stage: _hyper_parameters(run_dir / stage / "last.ckpt") for stage in ("classifier", "cgnet")}
    return update_json(
        run_dir / "summary.json",
        {
            "name": name,
            "seed": seed,
            "dataset": "synthetic",
            "classifier_backbone": configs["classifier"].get("backbone"),
            "cgnet_backbone": configs["cgnet"].get("backbone"),
            "backbone_options": configs["cgnet"].get("backbone_options"),
            "masking_depth": configs["cgnet"].get("masking_depth"),
            "stage_seconds": times,
            "total_seconds": round(sum(times.values()), 1),
        },
    )


def _hyper_parameters(checkpoint: Path) -> dict:
    import torch

    return torch.load(checkpoint, map_location="cpu", weights_only=False).get("hyper_parameters", {})


def format_summary(summary: dict) -> str:
    rows = [
        ("ordinary classifier CAM", summary.get("oc_cam_miou"), summary.get("oc_cam_threshold")),
        ("CGNet CAM", summary.get("cgnet_cam_miou"), summary.get("cgnet_cam_threshold")),
    ]
    lines = [f"{'stage':<26}{'mIoU':>8}{'thr':>7}", "-" * 41]
    lines += [f"{label:<26}{_fmt(miou):>8}{_fmt(thr):>7}" for label, miou, thr in rows]
    lines.append("-" * 41)
    lines += [f"{step:<26}{seconds:>7.1f}s" for step, seconds in summary.get("stage_seconds", {}).items()]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m caef.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="demo", help="run name: outputs go to <runs-root>/<name>")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-root", default="runs")
    parser.add_argument("overrides", nargs="*", help="extra --key=value flags passed to every stage")
    args = parser.parse_args(argv)
    summary = run_demo(args.name, args.seed, args.runs_root, args.overrides)
    print("\n" + format_summary(summary))
    print(f"\nsummary: {Path(args.runs_root) / args.name / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
