"""``caef pipeline`` on the command line: the flag grammar (shared with ``caef sweep`` and W&B sweep agents) and
the table a finished run prints."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence

from caef.pipeline import Pipeline, PipelineConfig
from caef.pipeline import __doc__ as PIPELINE_DOC
from caef.pipeline_config import check_parallel_stages
from caef.precision_policy import PRECISIONS
from caef.reported_metrics import evaluation_of
from caef.stage_graph import LIGHTNING_STAGES, ORDER, STAGES

#: summary rows of the final table: (label, metric key, threshold key or None)
TABLE_ROWS = (
    ("ordinary classifier CAM", "oc_cam_miou", "oc_cam_threshold"),
    ("CGNet CAM", "cgnet_cam_miou", "cgnet_cam_threshold"),
    ("CRF seeds (decided px)", "crf_seed_miou", None),
    ("pseudo labels", "pseudo_label_miou", None),
    ("DeepLab val (pseudo)", "deeplab_val_miou", None),
    ("DeepLab val (ground truth)", "fully_supervised_val_miou", None),
)


def format_summary(summary: dict) -> str:
    """Every stage's mIoU, then every stage's time."""
    lines = [f"{'stage':<28}{'mIoU':>8}{'thr':>7}", "-" * 43]
    for label, key, thr_key in TABLE_ROWS:
        if key in summary:
            thr = summary.get(thr_key) if thr_key else None
            evaluation = evaluation_of(summary, key)  # DeepLab's: plain, flip, dense CRF
            note = f"  ({evaluation})" if evaluation else ""
            lines.append(f"{label:<28}{_fmt(summary.get(key)):>8}{_fmt(thr):>7}{note}")
    lines.append("-" * 43)
    side = {stage for group in summary.get("stage_groups", []) for stage in group}
    lines += [
        f"{stage:<28}{seconds:>7.1f}s" + ("  (side by side)" if stage in side else "")
        for stage, seconds in summary.get("stage_seconds", {}).items()
        if seconds
    ]
    lines.append(f"{'total':<28}{summary.get('total_seconds', 0):>7.1f}s")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, dict[str, list[str]]]:
    """``CONFIG [--name N] [--seed S] [--from A] [--until B] [--<stage>.<key>=value ...] [--all.<key>=value ...]``.

    ``--cgnet.model.masking_depth=3`` reaches the cgnet stage as ``--model.masking_depth=3``; ``--all.X`` reaches
    every Lightning stage. This is the shape a W&B sweep agent passes (``${args}``)."""
    parser = argparse.ArgumentParser(prog="caef pipeline", description=PIPELINE_DOC.splitlines()[0])
    parser.add_argument("config", help="experiment YAML (experiments/demo.yaml, voc_full.yaml, coco_full.yaml)")
    parser.add_argument("--name", help="run name (default: the config's); outputs go to <runs_root>/<name>")
    parser.add_argument("--seed", type=int, help="seed of every stage (default: the config's)")
    parser.add_argument("--runs_root", "--runs-root", dest="runs_root", help="folder of runs (default: runs)")
    parser.add_argument("--data_root", "--data-root", dest="data_root", help="dataset root (default: the config's)")
    parser.add_argument(
        "--parallel_stages",
        "--parallel-stages",
        dest="parallel_stages",
        type=int,
        help="run up to N consecutive independent stages side by side (default: the config's, else 1)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="trainer.precision of the classifier, CGNet and DeepLab stages; auto: bf16-mixed on a CPU with AMX, "
        "else 32-true (default: the config's, else each stage config's own)",
    )
    parser.add_argument("--from", dest="start", choices=ORDER, help="first stage to run")
    parser.add_argument("--until", choices=ORDER, help="last stage to run")
    parser.add_argument(
        "--dry_run",
        "--dry-run",
        dest="dry_run",
        action="store_true",
        help="print what each stage would do and its command; writes nothing",
    )
    parser.add_argument(
        "--keep_stale_code",
        "--keep-stale-code",
        dest="keep_stale_code",
        action="store_true",
        help="keep done stages computed by older caef code (same settings) instead of rerunning them",
    )
    known, rest = parser.parse_known_args(list(argv))
    overrides: dict[str, list[str]] = {}
    for token in rest:
        stage, _, flag = token.removeprefix("--").partition(".")
        if not token.startswith("--") or not flag or "=" not in flag or (stage not in STAGES and stage != "all"):
            parser.error(
                f"unrecognised argument {token!r}: stage flags look like --<stage>.<key>=<value> with <stage> one "
                f"of {', '.join(ORDER)} or 'all' (every Lightning stage), e.g. --cgnet.model.masking_depth=3"
            )
        targets = [s for s in ORDER if STAGES[s].command[0] in LIGHTNING_STAGES] if stage == "all" else [stage]
        for target in targets:
            overrides.setdefault(target, []).append(f"--{flag}")
    return known, overrides


#: experiment-file keys a ``caef pipeline`` flag (or a sweep point) overrides
CONFIG_FLAGS = ("name", "seed", "runs_root", "data_root", "parallel_stages", "precision")


def apply_flags(config: PipelineConfig, args: argparse.Namespace) -> None:
    """The pipeline flags given (on the command line, or by a sweep point) over the experiment file's values, all
    of them: a sweep over ``precision`` or ``parallel_stages`` reaches its points."""
    for key in CONFIG_FLAGS:
        if getattr(args, key, None) is not None:
            setattr(config, key, getattr(args, key))
    check_parallel_stages(config.parallel_stages)


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    config = PipelineConfig.load(args.config)
    apply_flags(config, args)
    if args.name is None and overrides:  # a sweep point: its own run folder, stable for the same flags
        config.name = f"{config.name}-{hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]}"
    pipeline = Pipeline(
        config, {s: o for s, o in overrides.items() if s in config.stages}, keep_stale_code=args.keep_stale_code
    )
    summary = pipeline.run(args.start, args.until, args.dry_run)
    if not args.dry_run:
        print("\n" + format_summary(summary))
        print(f"\nsummary: {pipeline.run_dir / 'summary.json'}, report: {pipeline.run_dir / 'report.md'}")
    return 0
