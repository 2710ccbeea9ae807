"""``caef dashboard``: the masking-depth and backbone comparisons as W&B reports, built by code (wandb-workspaces).

    caef dashboard --entity E --project P --sweep ID [--kind masking_depth|backbones] [--metric M]
    caef dashboard --entity E --project P --group NAME [--group NAME ...]
    caef dashboard --results runs/sweeps/masking_depth/results.json --dry_run report.json

The panels read the pipeline runs: a sweep point run by ``wandb agent`` (or any ``caef pipeline`` with
``WANDB_RUN_ID`` set) logs every ``summary.json`` metric under its own name, in percent, with the run's facts
(``masking_depth``, ``seed``, ``classifier_backbone``, ...) as config. The CAM overlays come from the CGNet stage
runs (``val/cams``: the same scoring images in every run). A finished local sweep (``results.json`` of ``caef sweep
--local``) selects its points' runs by group and adds its tables, the numbers of ``table.md``, to the report.

``--dry_run OUT.json`` writes the report's spec (the library's ``ReportViewspec`` model as JSON) without a server and
checks it by loading it back with that model; run sets then name no entity/project (the server resolves those when
the report is saved).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from caef.errors import CaefError
from caef.io import write_text
from caef.reported_metrics import reported_metrics
from caef.sweep_results import METRICS, REFERENCE, format_tables, load_results, per_class_key

#: report kind -> (swept parameter as a sweep names it, the run fact it sets, default metric, title)
KINDS = {
    "masking_depth": ("cgnet.model.masking_depth", "masking_depth", "cgnet_cam_miou", "CGNet CAM by masking depth"),
    "backbones": ("classifier.model.backbone", "classifier_backbone", "cgnet_cam_miou",
                  "OC and CGNet CAM by classifier backbone (Table I)"),
}  # fmt: skip
#: the W&B key of the CGNet's CAM overlays (caef.callbacks.CAMVisualization)
CAM_IMAGES = "val/cams"


def build_report(
    entity: str,
    project: str,
    kind: str = "masking_depth",
    metric: str | None = None,
    sweep: str | None = None,
    groups: Sequence[str] = (),
    results: dict | None = None,
    classes: Sequence[str] = (),
    offline: bool = False,
) -> Any:
    """The report (a ``wandb_workspaces.reports.v2.Report``); nothing is sent until ``save()``."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    if kind not in KINDS:
        raise CaefError(f"--kind {kind!r}: choose one of {', '.join(KINDS)}")
    _, param, default_metric, title = KINDS[kind]
    metric = metric or default_metric
    if metric not in reported_metrics():
        known = ", ".join(reported_metrics())
        raise CaefError(f"--metric {metric!r} is not a metric caef reports; use one of: {known}")
    where = {"entity": "", "project": ""} if offline else {"entity": entity, "project": project}
    selection = [expr.Metric("Sweep") == sweep] if sweep else []
    selection += [expr.Metric("Group").isin(list(groups))] if groups else []
    pipeline_runs = wr.Runset(name="pipeline runs", filters=expr.And(expr.Metric("JobType") == "pipeline", *selection),
                              order=[wr.OrderBy(name=wr.Config(param), ascending=True)], **where)  # fmt: skip
    stage_selection = [expr.Config("pipeline.sweep_id") == sweep] if sweep else []
    stage_selection += [expr.Metric("Group").isin(list(groups))] if groups else []
    by_param = [wr.OrderBy(name=wr.Config(f"pipeline.{param}"), ascending=True)]
    stage_filter = expr.And(expr.Metric("JobType") == "cgnet", *stage_selection)
    cgnet_runs = wr.Runset(name="CGNet stage runs", filters=stage_filter, order=by_param, **where)
    spread = {"groupby": wr.Config(param), "groupby_aggfunc": "mean", "groupby_rangefunc": "stddev"}
    about = f"sweep {sweep}" if sweep else f"groups {', '.join(groups)}" if groups else f"project {project}"
    blocks: list[Any] = [wr.P(f"{about}: `{metric}` (percent, summary.json names) against `{param}`; mean ± std "
                              f"over seeds, the ordinary classifier ({REFERENCE}) as reference.")]  # fmt: skip
    if kind == "masking_depth":
        panels = [
            wr.ScatterPlot(title=f"{metric} per seed", x=wr.Config(param), y=wr.SummaryMetric(metric),
                           legend_template="seed ${config:seed}", layout=wr.Layout(x=0, y=0, w=12, h=8)),
            wr.BarPlot(title=f"{metric}: mean ± std over seeds; {REFERENCE}: the reference", orientation="v",
                       metrics=[wr.SummaryMetric(metric), wr.SummaryMetric(REFERENCE)], **spread,
                       layout=wr.Layout(x=12, y=0, w=12, h=8)),
            wr.ScalarChart(title=f"reference: {REFERENCE} (mean)", metric=wr.SummaryMetric(REFERENCE),
                           groupby_aggfunc="mean", layout=wr.Layout(x=0, y=8, w=6, h=4)),
            wr.ParallelCoordinatesPlot(title="sweep", columns=[
                wr.ParallelCoordinatesPlotColumn(metric=wr.Config(param)),
                wr.ParallelCoordinatesPlotColumn(metric=wr.Config("seed")),
                wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(metric))],
                layout=wr.Layout(x=6, y=8, w=18, h=6)),
        ]  # fmt: skip
        stem = per_class_key(metric)
        if stem and classes:
            panels.append(wr.BarPlot(title=f"per-class {stem} by {param} (mean over seeds)", orientation="v",
                                     metrics=[wr.SummaryMetric(f"{stem}.{c}") for c in classes], **spread,
                                     layout=wr.Layout(x=0, y=14, w=24, h=8)))  # fmt: skip
        blocks += [wr.H2(title), wr.PanelGrid(runsets=[pipeline_runs], panels=panels)]
        blocks += [wr.H2(f"CAM overlays of the same scoring images at each {param}"),
                   wr.PanelGrid(runsets=[cgnet_runs], panels=[wr.MediaBrowser(
                       title=f"{CAM_IMAGES} by {param}", media_keys=[CAM_IMAGES], num_columns=4,
                       layout=wr.Layout(x=0, y=0, w=24, h=12))])]  # fmt: skip
    else:
        panels = [
            wr.BarPlot(title=f"OC and CGNet CAM mIoU per {param} (mean ± std over seeds)", orientation="v",
                       metrics=[wr.SummaryMetric(REFERENCE), wr.SummaryMetric("cgnet_cam_miou")], **spread,
                       layout=wr.Layout(x=0, y=0, w=24, h=8)),
            wr.RunComparer(diff_only="split", layout=wr.Layout(x=0, y=8, w=24, h=10)),
        ]  # fmt: skip
        blocks += [wr.H2(title), wr.PanelGrid(runsets=[pipeline_runs], panels=panels)]
    if results is not None:
        blocks += [wr.H2(f"Local sweep {results.get('sweep', '')}: the numbers of table.md"),
                   wr.MarkdownBlock(text=local_tables(results, kind))]  # fmt: skip
    return wr.Report(entity=entity, project=project, title=f"caef: {title}", description=about, blocks=blocks)


def local_tables(results: dict, kind: str) -> str:
    """``table.md``'s tables; for backbones also Table I's form: OC and CGNet CAM per classifier backbone."""
    text = format_tables(results)
    if kind != "backbones":
        return text
    lines = ["| classifier backbone | OC CAM | CGNet CAM |", "|---|---|---|"]
    for row in results["by_value"]:
        value = row["params"].get(KINDS["backbones"][0])
        lines.append(f"| {value} | {_mean_std(row.get(REFERENCE))} | {_mean_std(row.get('cgnet_cam_miou'))} |")
    return "\n".join(lines) + "\n\n" + text


def _mean_std(s: dict | None) -> str:
    return "-" if not s or s.get("mean") is None else f"{s['mean']:.2f} ± {s['std']:.2f}"


def report_spec(report: Any) -> str:
    """The report as the library's JSON model (what ``save()`` sends)."""
    return report._to_model().model_dump_json(by_alias=True, exclude_none=True, indent=2)


def load_spec(text: str) -> Any:
    """A spec read back with the library's own model: raises if it is not a valid report."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces.reports.v2 import internal

    return wr.Report._from_model(internal.ReportViewspec.model_validate_json(text))


def classes_of(results: dict | None, metric: str) -> list[str]:
    """Class names of the metric's per-class IoU, from a local sweep's points."""
    key = per_class_key(metric)
    for r in (results or {}).get("results", []):
        if isinstance(r.get(key), dict):
            return list(r[key])
    return []


def _classes_online(entity: str, project: str, metric: str, sweep: str | None, groups: Sequence[str]) -> list[str]:
    import wandb

    filters: dict[str, Any] = {"jobType": "pipeline"}
    if sweep:
        filters["sweep"] = sweep
    if groups:
        filters["group"] = {"$in": list(groups)}
    for run in wandb.Api().runs(f"{entity}/{project}", filters=filters, per_page=5):
        per_class = run.summary.get(per_class_key(metric) or "")
        if isinstance(per_class, dict):
            return list(per_class)
    return []


def _kind_of(results: dict) -> str | None:
    names = set(results.get("parameters") or {}) | {n for r in results["results"] for n in r.get("point", {})}
    return next((kind for kind, (name, *_) in KINDS.items() if name in names), None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="caef dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("--entity", default=os.environ.get("WANDB_ENTITY"), help="W&B entity (default $WANDB_ENTITY)")
    parser.add_argument("--project", default=os.environ.get("WANDB_PROJECT", "caef"), help="W&B project (caef)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--sweep", help="W&B sweep id: its pipeline runs")
    source.add_argument("--group", action="append", default=[], help="W&B group (= caef run name); repeatable")
    source.add_argument("--results", help="a finished local sweep: runs/sweeps/<sweep>/results.json")
    parser.add_argument("--kind", choices=tuple(KINDS), help="report (default: from --results, else masking_depth)")
    parser.add_argument("--metric", help=f"summary metric (default cgnet_cam_miou; e.g. {', '.join(METRICS)})")
    parser.add_argument("--dry_run", "--dry-run", dest="dry_run", metavar="OUT.json",
                        help="write the report's spec here and check it; nothing is sent")  # fmt: skip
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    results = load_results(args.results) if args.results else None
    groups = list(args.group) or [Path(r["run"]).name for r in (results or {}).get("results", [])]
    kind = args.kind or (results and _kind_of(results)) or "masking_depth"
    metric = args.metric or (results or {}).get("metric") or KINDS[kind][2]
    entity = args.entity or ("local" if args.dry_run else None)
    if entity is None:
        raise CaefError("caef dashboard needs --entity (or WANDB_ENTITY) to save a report (--dry_run needs none)")
    classes = classes_of(results, metric)
    if args.dry_run:
        report = build_report(entity, args.project, kind, metric, args.sweep, groups, results, classes, offline=True)
        text = report_spec(report)
        load_spec(text)
        write_text(args.dry_run, text + "\n")
        print(f"report spec ({kind}, {metric}) written to {args.dry_run}; checked with wandb-workspaces' model")
        return 0
    try:
        classes = classes or _classes_online(entity, args.project, metric, args.sweep, groups)
        report = build_report(entity, args.project, kind, metric, args.sweep, groups, results, classes)
        report.save()
    except CaefError:
        raise
    except Exception as exc:  # noqa: BLE001 -- login, network, unknown entity/project: one line, not a traceback
        raise CaefError(
            f"could not save the report to W&B {entity}/{args.project}: {type(exc).__name__}: {exc} "
            "(`wandb login`; or write the spec offline with --dry_run OUT.json)"
        ) from exc
    print(report.url)
    return 0
