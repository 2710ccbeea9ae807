"""``caef sweep FILE --local``: a W&B sweep file run offline as a grid, then a comparison table and plot.

The same file works with ``wandb sweep FILE`` + ``wandb agent``: its ``command`` runs ``caef pipeline CONFIG
${args}``, and the agent's ``${args}`` are ``--<stage>.<key>=<value>`` flags, which the pipeline routes to its
stages. ``--local`` expands the grid itself (``values`` lists; ``value`` constants), runs each point as a
pipeline run named ``<sweep>-<param>=<value>...`` (a stage whose config and inputs match one already run, such
as the shared ordinary classifier, is copied instead of retrained), and writes
``<runs_root>/sweeps/<sweep>/{results.json,table.md,<metric>.png}``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from caef.errors import CaefError
from caef.io import atomic_path, read_yaml_mapping, write_json

#: metrics compared in the table (summary keys), in pipeline order
METRICS = ("oc_cam_miou", "cgnet_cam_miou", "pseudo_label_miou", "deeplab_val_miou")


def load_sweep(path: str | Path) -> dict:
    sweep = read_yaml_mapping(path, "sweep file", "see experiments/sweeps/")
    for key in ("command", "parameters"):
        if key not in sweep:
            raise CaefError(f"sweep file {path} has no {key!r} (a W&B sweep file: program, command, parameters)")
    return sweep


def grid_points(parameters: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the ``values`` lists (``value`` entries are constants), in file order."""
    names, choices = [], []
    for name, spec in parameters.items():
        if not isinstance(spec, dict) or not ("values" in spec or "value" in spec):
            raise CaefError(f"sweep parameter {name!r} needs `values: [...]` or `value: x` for a local grid")
        names.append(name)
        choices.append(list(spec["values"]) if "values" in spec else [spec["value"]])
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


def run_local(
    path: str | Path, base: str | None, extra: Sequence[str], runs_root: str, jobs: int = 1, dry_run: bool = False
) -> list[dict]:
    from caef.pipeline import Pipeline, PipelineConfig
    from caef.pipeline_cli import parse_args

    sweep = load_sweep(path)
    sweep_name = sweep.get("name") or Path(path).stem
    points = grid_points(sweep["parameters"])
    runs = []
    for point in points:
        args, overrides = parse_args([*pipeline_argv(sweep, point, base), *extra])
        config = PipelineConfig.load(args.config)
        config.runs_root = args.runs_root or runs_root
        config.name = args.name or point_name(sweep_name, point)
        config.seed = config.seed if args.seed is None else args.seed
        config.data_root = args.data_root or config.data_root
        runs.append((point, Pipeline(config, {s: o for s, o in overrides.items() if s in config.stages}), args))
    print(f"[caef sweep] {sweep_name}: {len(runs)} points", flush=True)

    def one(item) -> dict:
        point, pipeline, args = item
        summary = pipeline.run(args.start, args.until, dry_run)
        return {"point": point, "run": str(pipeline.run_dir)} | {m: summary.get(m) for m in METRICS}

    if jobs > 1:  # the shared first stage runs once before the points fan out
        first, rest = runs[0], runs[1:]
        results = [one(first)]
        with ThreadPoolExecutor(jobs) as pool:
            results += list(pool.map(one, rest))
    else:
        results = [one(item) for item in runs]
    if not dry_run:
        out = Path(runs_root) / "sweeps" / sweep_name
        write_results(out, sweep_name, sweep, results)
        print(f"\n{format_table(results)}\n\n[caef sweep] table and plot in {out}")
    return results


def format_table(results: list[dict]) -> str:
    names = list(results[0]["point"]) if results else []
    metrics = [m for m in METRICS if any(r.get(m) is not None for r in results)]
    header = "| " + " | ".join([*names, *metrics]) + " |"
    lines = [header, "|" + "---|" * (len(names) + len(metrics))]
    for r in results:
        cells = [_flag_value(r["point"][n]) for n in names]
        cells += ["-" if r.get(m) is None else f"{r[m]:.2f}" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(out: Path, sweep_name: str, sweep: dict, results: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", {"sweep": sweep_name, "parameters": sweep["parameters"], "results": results})
    with atomic_path(out / "table.md") as tmp:
        Path(tmp).write_text(format_table(results) + "\n")
    metric = (sweep.get("metric") or {}).get("name") or "cgnet_cam_miou"
    plot_results(out / f"{metric}.png", results, metric)


def plot_results(path: Path, results: list[dict], metric: str) -> None:
    """Metric against the (first) swept parameter: a line for numbers, bars for names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results:
        return
    name = next(iter(results[0]["point"]))
    xs = [r["point"][name] for r in results]
    ys = [r.get(metric) if r.get(metric) is not None else float("nan") for r in results]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs):
        ax.plot(xs, ys, marker="o")
        ax.set_xticks(xs)
    else:
        ax.bar([str(x) for x in xs], ys)
    for x, y in zip(xs if isinstance(xs[0], (int, float)) else range(len(xs)), ys):
        ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=8)
    ax.set_xlabel(name)
    ax.set_ylabel(f"{metric} (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


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
        points = grid_points(sweep["parameters"])
        first = shlex.join(["pipeline", *pipeline_argv(sweep, points[0], args.base)])
        print(f"run it through W&B: wandb sweep {args.file}; wandb agent <id>\nor offline: caef sweep {args.file} "
              f"--local\n{len(points)} points; the first runs: caef {first}")  # fmt: skip
        return 0
    run_local(args.file, args.base, extra, args.runs_root, args.jobs, args.dry_run)
    return 0
