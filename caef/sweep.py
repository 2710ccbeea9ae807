"""``caef sweep FILE --local``: a W&B sweep file run offline as a grid, then a comparison table and plot.

The same file works with ``wandb sweep FILE`` + ``wandb agent``: its ``command`` runs ``caef pipeline CONFIG
${args}``, and the agent's ``${args}`` are ``--<stage>.<key>=<value>`` flags, which the pipeline routes to its
stages. Before anything runs the file is checked against what caef logs (:func:`check_sweep`): ``metric.name`` is a
metric the pipeline reports, every parameter a flag its stage's own parser accepts. ``--local`` expands the grid
itself (``values`` lists; ``value`` constants), runs each point as a pipeline run named ``<sweep>-<param>=<value>...``
(a stage whose config and inputs match one already run, such as the shared ordinary classifier, is copied instead of
retrained), and writes ``<runs_root>/sweeps/<sweep>/{results.json,table.md,<metric>.png}``: the comparison that
``caef dashboard`` shows on W&B (``caef/sweep_results.py``). ``--dry_run`` prints the commands and writes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from caef.errors import CaefError
from caef.io import read_yaml_mapping
from caef.pipeline_tracking import RUN_BINDING_VARIABLES
from caef.reported_metrics import reported_metrics
from caef.sweep_results import METRICS, format_tables, metric_of, per_class_key, write_results

#: set by `wandb agent` for the run it started; `caef sweep --local` is not such a run
AGENT_VARIABLES = tuple(v for v in RUN_BINDING_VARIABLES if v in ("WANDB_RUN_ID", "WANDB_SWEEP_ID"))


def load_sweep(path: str | Path) -> dict:
    """A W&B sweep file with a ``command`` list and a ``parameters`` mapping of ``name: {values | value | min/max}``."""
    sweep = read_yaml_mapping(path, "sweep file", "see experiments/sweeps/")
    for key in ("command", "parameters"):
        if key not in sweep:
            raise CaefError(f"sweep file {path} has no {key!r} (a W&B sweep file: program, command, parameters)")
    if not isinstance(sweep["command"], list) or not all(isinstance(t, str) for t in sweep["command"]):
        raise CaefError(f"sweep file {path}: `command` must be a list of strings: ${{program}}, pipeline, CONFIG, "
                        "${args} (see experiments/sweeps/)")  # fmt: skip
    parameters = sweep["parameters"]
    if not isinstance(parameters, dict) or not parameters:
        found = type(parameters).__name__ if parameters else "nothing"
        raise CaefError(
            f"sweep file {path}: `parameters` must be a mapping of flag name -> {{values: [...]}} or {{value: x}} "
            f"(found {found}), e.g. `parameters: {{cgnet.model.masking_depth: {{values: [0, 3]}}}}`"
        )
    for name, spec in parameters.items():
        if not isinstance(spec, dict) or not ({"values", "value"} & set(spec) or {"min", "max"} <= set(spec)):
            raise CaefError(f"sweep file {path}: parameter {name!r} needs `values: [...]`, `value: x` or `min`/`max`")
        if "values" in spec and (not isinstance(spec["values"], list) or not spec["values"]):
            raise CaefError(f"sweep file {path}: parameter {name!r}: `values` must be a non-empty list")
    metric = sweep.get("metric")
    if metric is not None and not (isinstance(metric, dict) and isinstance(metric.get("name"), str)):
        raise CaefError(f"sweep file {path}: `metric` must be a mapping with a `name` (e.g. cgnet_cam_miou)")
    return sweep


def grid_points(parameters: dict[str, Any], local: bool = True) -> list[dict[str, Any]]:
    """Every combination of the ``values`` lists (``value`` entries are constants), in file order; ``local=False``
    also accepts ``min``/``max`` ranges (W&B samples them; a local grid cannot), taking both ends."""
    names, choices = [], []
    for name, spec in parameters.items():
        if local and not ("values" in spec or "value" in spec):
            raise CaefError(f"sweep parameter {name!r} needs `values: [...]` or `value: x` for a local grid")
        names.append(name)
        choices.append(_spec_values(spec))
    return [dict(zip(names, combo)) for combo in itertools.product(*choices)]


def agent_args(point: dict[str, Any]) -> list[str]:
    """The flags a W&B agent passes for ``${args}``: ``--name=value`` per parameter."""
    return [f"--{name}={_flag_value(value)}" for name, value in point.items()]


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def pipeline_argv(sweep: dict, point: dict[str, Any], base: str | None = None) -> list[str]:
    """``caef pipeline ...`` argv for one point: the sweep's ``command`` with ``${args}`` expanded (its config
    replaced by ``base`` if given)."""
    argv: list[str] = []
    for token in sweep["command"]:
        if token == "${args}":
            argv += agent_args(point)
        elif token in ("${program}", "${env}", "${interpreter}") or token == sweep.get("program"):
            continue
        else:
            argv.append(token)
    if not argv or argv[0] != "pipeline":
        raise CaefError(f"sweep command {sweep['command']} must run `caef pipeline CONFIG ${{args}}`")
    if base is not None:
        argv[1] = base
    return argv[1:]


def point_name(sweep_name: str, point: dict[str, Any]) -> str:
    parts = [f"{name.split('.')[-1]}={_flag_value(value)}" for name, value in point.items()]
    return "-".join([sweep_name, *parts]).replace("/", "_").replace(" ", "")


def check_sweep(sweep: dict, path: str | Path, base: str | None = None) -> None:
    """Before anything runs: the metric is one the pipeline reports, every parameter a flag its stage accepts
    (parsed by the stage's own command line, :func:`caef.stage_flags.check_stage_flags`) or a pipeline flag."""
    from caef.pipeline import PipelineConfig
    from caef.pipeline_cli import parse_args
    from caef.stage_flags import check_stage_flags
    from caef.stage_graph import LIGHTNING_STAGES, STAGES

    points = grid_points(sweep["parameters"], local=False)
    config_path = pipeline_argv(sweep, points[0], base)[0]
    config = PipelineConfig.load(config_path)
    metric = sweep.get("metric")
    if metric is not None:
        name = metric.get("name") if isinstance(metric, dict) else None
        reported = reported_metrics(config.stages)
        if name not in reported:
            raise CaefError(
                f"sweep file {path}: metric.name {name!r} is not a metric this pipeline reports ({config_path}); "
                f"use one of: {', '.join(reported)}"
            )
    for name, spec in sweep["parameters"].items():
        stage, _, key = name.partition(".")
        values = _spec_values(spec)
        if not key:  # a pipeline flag (--seed)
            for value in values:
                _check_pipeline_flag(path, name, value, [config_path, f"--{name}={_flag_value(value)}"], parse_args)
            continue
        if stage == "all":
            stages = [s for s in config.stages if STAGES[s].command[0] in LIGHTNING_STAGES]
        elif stage in config.stages:
            stages = [stage]
        else:
            known = ", ".join([*config.stages, "all"])
            raise CaefError(f"sweep file {path}: parameter {name!r}: no stage {stage!r} in {config_path} ({known})")
        for target in stages:
            flags = [f"--{key}={_flag_value(value)}" for value in values]
            try:
                for flag in flags:
                    check_stage_flags(target, config.stages[target]["config"], [flag])
            except CaefError as exc:
                raise CaefError(f"sweep file {path}: parameter {name!r}: {exc}") from exc


def _spec_values(spec: Any) -> list[Any]:
    if "values" in spec:
        return list(spec["values"])
    if "value" in spec:
        return [spec["value"]]
    return [spec[k] for k in ("min", "max") if k in spec]


def _check_pipeline_flag(path: str | Path, name: str, value: Any, argv: list[str], parse_args: Any) -> None:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args, overrides = parse_args(argv)
    except SystemExit:
        reason = stderr.getvalue().strip().splitlines()[-1:] or ["rejected"]
        raise CaefError(f"sweep file {path}: parameter {name!r} = {value!r}: {reason[0]}") from None
    if name not in vars(args) or overrides:
        raise CaefError(
            f"sweep file {path}: parameter {name!r} is neither a `caef pipeline` flag nor a <stage>.<key> flag "
            "(e.g. cgnet.model.masking_depth)"
        )


def run_local(
    path: str | Path, base: str | None, extra: Sequence[str], runs_root: str, jobs: int = 1, dry_run: bool = False
) -> list[dict]:
    """Check the sweep, then run (or, with ``dry_run``, print without writing anything) every point."""
    from caef.pipeline import Pipeline, PipelineConfig
    from caef.pipeline_cli import apply_flags, parse_args
    from caef.stage_schedule import thread_share

    bound = [v for v in AGENT_VARIABLES if os.environ.get(v)]
    if bound:
        raise CaefError(
            f"caef sweep --local runs its own grid, but {', '.join(bound)} is set (a `wandb agent` run): unset it, "
            "or let the agent run `caef pipeline` (the sweep file's command)"
        )
    sweep = load_sweep(path)
    check_sweep(sweep, path, base)
    sweep_name = sweep.get("name") or Path(path).stem
    points = grid_points(sweep["parameters"])
    runs = []
    for point in points:
        args, overrides = parse_args([*pipeline_argv(sweep, point, base), *extra])
        config = PipelineConfig.load(args.config)
        apply_flags(config, args)
        config.runs_root = args.runs_root or runs_root
        config.name = args.name or point_name(sweep_name, point)
        # points run `jobs` at a time share the CPU threads (the first runs alone: the stages the others share)
        threads = thread_share(jobs) if jobs > 1 and runs else {}
        pipeline = Pipeline(config, {s: o for s, o in overrides.items() if s in config.stages}, threads=threads)
        runs.append((point, pipeline, args))
    print(f"[caef sweep] {sweep_name}: {len(runs)} points", flush=True)
    if dry_run:  # Pipeline.run(dry_run=True) would create the run folders
        for point, pipeline, args in runs:
            stages = pipeline.stages()
            first = stages.index(args.start) if args.start else 0
            last = stages.index(args.until) if args.until else len(stages) - 1
            print(f"\n[caef sweep] {pipeline.run_dir} ({point})")
            for stage in stages[first : last + 1]:
                print(f"  caef {shlex.join(pipeline.argv(stage))}")
        return []

    def one(item) -> dict:
        point, pipeline, args = item
        summary = pipeline.run(args.start, args.until, dry_run)
        wanted = dict.fromkeys([*METRICS, metric_of(sweep), per_class_key(metric_of(sweep))])
        wanted.pop(None, None)  # a metric without per-class values
        return {"point": point, "run": str(pipeline.run_dir), "seed": summary.get("seed", pipeline.config.seed)} | {
            m: summary.get(m) for m in wanted
        }

    if jobs > 1:  # the shared first stage runs once before the points fan out
        from caef.stage_runner import Interrupted, stop_signals

        first, rest = runs[0], runs[1:]
        results = [one(first)]
        # the points' pipelines run in worker threads, which cannot take signals: here SIGTERM/SIGINT stop every
        # running stage's process group (the workers' stages then fail and the pool ends)
        try:
            with stop_signals(), ThreadPoolExecutor(jobs) as pool:
                results += list(pool.map(one, rest))
        except Interrupted as stop:
            raise CaefError(
                f"interrupted by {signal.Signals(stop.signum).name} (every running point's stages were stopped); "
                "rerun the same command to resume"
            ) from None
    else:
        results = [one(item) for item in runs]
    out = Path(runs_root) / "sweeps" / sweep_name
    data = write_results(out, sweep_name, sweep, results)
    print(f"\n{format_tables(data)}\n\n[caef sweep] table and plot in {out}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="caef sweep", description=__doc__.splitlines()[0])
    parser.add_argument("file", help="W&B sweep YAML (experiments/sweeps/*.yaml)")
    parser.add_argument("--local", action="store_true", help="run the grid here, offline (required: use `wandb "
                        "sweep FILE` + `wandb agent` to run it through W&B)")  # fmt: skip
    parser.add_argument("--base", help="pipeline config to use instead of the one in the sweep's command")
    parser.add_argument("--runs_root", "--runs-root", dest="runs_root", default="runs")
    parser.add_argument("--jobs", type=int, default=1, help="points run at once (default 1: sequential)")
    parser.add_argument("--dry_run", "--dry-run", dest="dry_run", action="store_true", help="print the commands only")
    args, extra = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    if not args.local:
        sweep = load_sweep(args.file)
        check_sweep(sweep, args.file, args.base)
        points = grid_points(sweep["parameters"], local=False)
        first = shlex.join(["pipeline", *pipeline_argv(sweep, points[0], args.base)])
        print(f"checked. Run it through W&B: wandb sweep {args.file}; wandb agent --forward-signals <id>; then "
              f"caef dashboard --sweep <id> (docs/sweeps.md)\nor offline: caef sweep {args.file} --local\n"
              f"{len(points)} points; the first runs: caef {first}")  # fmt: skip
        return 0
    run_local(args.file, args.base, extra, args.runs_root, args.jobs, args.dry_run)
    return 0
