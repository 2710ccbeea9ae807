"""`caef dashboard --dry_run` on a finished local sweep: a report spec that wandb-workspaces loads back."""

from __future__ import annotations

import json
from pathlib import Path

from caef.cli import main as caef_main


def fake_sweep(tmp_path: Path, parameter: str, values: list, seeds=(0, 1)) -> Path:
    """A local sweep's results.json as `caef sweep --local` leaves it (points only: the stats are derived)."""
    results = []
    for seed in seeds:
        for i, value in enumerate(values):
            results.append({"point": {"seed": seed, parameter: value}, "run": f"runs/sw-{i}-{seed}", "seed": seed,
                            "oc_cam_miou": 40.0 + seed, "cgnet_cam_miou": 50.0 + 2 * i + seed,
                            "cgnet_cam_iou": {"stripes": 0.5 + i / 10, "dots": None}})  # fmt: skip
    path = tmp_path / "sweeps" / "sw" / "results.json"
    path.parent.mkdir(parents=True)
    body = {"sweep": "sw", "metric": "cgnet_cam_miou", "results": results,
            "parameters": {"seed": {"values": list(seeds)}, parameter: {"values": values}}}  # fmt: skip
    path.write_text(json.dumps(body))
    return path


def load_back(path: Path):
    """The spec through the library's own model (not caef's code)."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces.reports.v2 import internal

    return wr.Report._from_model(internal.ReportViewspec.model_validate_json(path.read_text()))


def panels(report, kind):
    return [p for block in report.blocks for p in getattr(block, "panels", []) if type(p).__name__ == kind]


def test_masking_depth_spec_from_a_local_sweep_loads_back_and_names_metric_and_parameter(tmp_path, capsys):
    import wandb_workspaces.reports.v2 as wr

    results = fake_sweep(tmp_path, "cgnet.model.masking_depth", [0, 3, 5])
    out = tmp_path / "spec.json"
    assert caef_main(["dashboard", f"--results={results}", f"--dry_run={out}"]) == 0
    report = load_back(out)
    (scatter,) = panels(report, "ScatterPlot")
    assert scatter.x == wr.Config("masking_depth") and scatter.y == wr.SummaryMetric("cgnet_cam_miou")
    mean_bar, class_bar = panels(report, "BarPlot")
    assert mean_bar.metrics == [wr.SummaryMetric("cgnet_cam_miou"), wr.SummaryMetric("oc_cam_miou")]
    assert mean_bar.groupby_aggfunc == "mean" and mean_bar.groupby_rangefunc == "stddev"
    assert class_bar.metrics == [wr.SummaryMetric("cgnet_cam_iou.stripes"), wr.SummaryMetric("cgnet_cam_iou.dots")]
    (media,) = panels(report, "MediaBrowser")
    assert media.media_keys == ["val/cams"]
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    groups = [f"sw-{i}-{s}" for s in (0, 1) for i in range(3)]
    for grid in grids:
        assert all(g in grid.runsets[0].filters for g in groups)
    assert "JobType\") == 'pipeline'" in grids[0].runsets[0].filters
    (table,) = [b for b in report.blocks if isinstance(b, wr.MarkdownBlock)]
    assert "| 3 | 2 | 40.50 ± 0.71 | 52.50 ± 0.71 |" in table.text  # depth 3: 52 and 53 over seeds 0 and 1
    assert "Reference: ordinary classifier CAM mIoU 40.50 ± 0.71" in table.text
    assert "masking_depth" in capsys.readouterr().out


def test_backbone_spec_is_table_one_oc_and_cgnet_cam_per_classifier_backbone(tmp_path):
    import wandb_workspaces.reports.v2 as wr

    results = fake_sweep(tmp_path, "classifier.model.backbone", ["resnet38", "vgg16"], seeds=(0,))
    out = tmp_path / "spec.json"
    assert caef_main(["dashboard", f"--results={results}", f"--dry_run={out}", "--entity=me", "--project=p"]) == 0
    report = load_back(out)
    assert (report.entity, report.project) == ("me", "p")
    (bar,) = panels(report, "BarPlot")
    assert bar.metrics == [wr.SummaryMetric("oc_cam_miou"), wr.SummaryMetric("cgnet_cam_miou")]
    assert bar.groupby == wr.Config("classifier_backbone")
    (table,) = [b for b in report.blocks if isinstance(b, wr.MarkdownBlock)]
    assert "| vgg16 | 40.00 ± 0.00 | 52.00 ± 0.00 |" in table.text


def test_a_metric_caef_does_not_report_is_a_one_line_error(tmp_path, capsys):
    results = fake_sweep(tmp_path, "cgnet.model.masking_depth", [0, 3])
    out = tmp_path / "x.json"
    assert caef_main(["dashboard", f"--results={results}", "--metric=val/cam_miou", f"--dry_run={out}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("caef: error: --metric 'val/cam_miou'") and len(err.strip().splitlines()) == 1
    assert not out.exists()
