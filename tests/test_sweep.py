"""Sweep files checked against what caef logs and accepts; `caef sweep --local` errors, dry runs and result tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from caef.cli import main as caef_main
from caef.errors import CaefError
from caef.reported_metrics import STAGE_METRICS, reported_metrics
from caef.sweep import check_sweep, load_sweep
from caef.sweep_results import aggregate, format_tables, load_results, reference, write_results

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "experiments" / "sweeps").glob("*.yaml"))


def sweep_file(tmp_path: Path, parameters, metric: str = "cgnet_cam_miou", config: str = "experiments/demo.yaml"):
    path = tmp_path / "s.yaml"
    body = {"name": "s", "program": "caef", "method": "grid", "metric": {"name": metric, "goal": "maximize"},
            "command": ["${program}", "pipeline", config, "${args}"], "parameters": parameters}  # fmt: skip
    path.write_text(yaml.safe_dump(body))
    return path


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = caef_main(argv)
    return code, capsys.readouterr().err


def test_every_sweep_file_reports_its_metric_and_each_parameter_is_accepted_by_its_stage(monkeypatch):
    monkeypatch.chdir(ROOT)  # the sweep commands name their configs relative to the repository
    assert SWEEPS
    for path in SWEEPS:
        sweep = load_sweep(path)
        assert sweep["metric"]["name"] in reported_metrics(), path
        check_sweep(sweep, path)


def test_a_misspelled_parameter_fails_the_dry_run_before_any_stage_and_names_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    path = sweep_file(tmp_path, {"cgnet.model.masking_depht": {"values": [0, 3]}})
    code, err = run_cli(["sweep", str(path), "--local", "--dry_run", f"--runs_root={tmp_path / 'runs'}"], capsys)
    assert code == 2 and err.startswith("caef: error: ") and len(err.strip().splitlines()) == 1
    assert "cgnet.model.masking_depht" in err and "masking_depht" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("parameters", "metric", "expected"),
    [
        (["cgnet.model.masking_depth"], "cgnet_cam_miou", "`parameters` must be a mapping"),
        ({"cgnet.model.masking_depth": [0, 3]}, "cgnet_cam_miou", "needs `values: [...]`"),
        ({"cgnet.model.masking_depth": {"values": [0, 3]}}, "val/cam_miou", "not a metric this pipeline reports"),
        ({"cgnet.model.masking_depth": {"values": ["deep"]}}, "cgnet_cam_miou", "masking_depth"),
        ({"nosuchstage.model.x": {"values": [1]}}, "cgnet_cam_miou", "no stage 'nosuchstage'"),
        ({"sed": {"values": [1]}}, "cgnet_cam_miou", "parameter 'sed'"),
    ],
)
def test_bad_sweep_files_are_one_line_errors(tmp_path, monkeypatch, capsys, parameters, metric, expected):
    monkeypatch.chdir(ROOT)
    path = sweep_file(tmp_path, parameters, metric)
    code, err = run_cli(["sweep", str(path), "--local", "--dry_run", f"--runs_root={tmp_path / 'runs'}"], capsys)
    assert code == 2 and err.startswith("caef: error: ") and len(err.strip().splitlines()) == 1, err
    assert expected in err and str(path) in err


def test_the_metric_must_be_reported_by_a_stage_of_the_pipeline(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = tmp_path / "short.yaml"
    config.write_text(yaml.safe_dump({"name": "short", "stages": {"classifier": {
        "config": "experiments/classifier/demo.yaml"}}}))  # fmt: skip
    path = sweep_file(tmp_path, {"seed": {"values": [0, 1]}}, "cgnet_cam_miou", str(config))
    with pytest.raises(CaefError, match="oc_cam_miou"):
        check_sweep(load_sweep(path), path)
    assert reported_metrics(["classifier"]) == (*STAGE_METRICS["classifier"], "total_seconds")


def test_local_dry_run_prints_every_point_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    runs = tmp_path / "runs"
    code = caef_main(["sweep", "experiments/sweeps/masking_depth.yaml", "--local", "--dry_run",
                      "--base=experiments/demo.yaml", "--until=cgnet", f"--runs_root={runs}"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and not runs.exists()
    assert out.count("caef cgnet fit") == 8 and "--model.masking_depth=7" in out
    assert out.count("caef classifier fit") == 8 and "caef cgnet predict" not in out


def test_a_swept_pipeline_flag_reaches_the_stages_of_every_point(tmp_path, monkeypatch, capsys):
    """``precision`` (or any key ``caef pipeline`` takes as a flag) swept: each point's stages get its value."""
    monkeypatch.chdir(ROOT)
    path = sweep_file(tmp_path, {"precision": {"values": ["32-true", "bf16-mixed"]}})
    code = caef_main(["sweep", str(path), "--local", "--dry_run", "--until=cgnet", f"--runs_root={tmp_path}"])
    out = capsys.readouterr().out
    assert code == 0
    cgnet_lines = [line for line in out.splitlines() if line.strip().startswith("caef cgnet fit")]
    assert [line.split("--trainer.precision=")[1].split()[0] for line in cgnet_lines] == ["32-true", "bf16-mixed"]


def test_points_run_side_by_side_share_the_threads(tmp_path, tiny_synth, monkeypatch):
    from caef.sweep import run_local
    from tests.reliability.fake_stage import fake_python
    from tests.reliability.pipeline_fixtures import experiment

    stages = f"{{classifier: {{config: {ROOT / 'experiments/classifier/demo.yaml'}}}}}"
    base = experiment(tmp_path, tiny_synth, stages)
    path = sweep_file(tmp_path, {"seed": {"values": [0, 1, 2]}}, metric="oc_cam_miou", config=str(base))
    monkeypatch.setattr("sys.executable", fake_python(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    monkeypatch.setenv("FAKE_TRACE", str(tmp_path / "trace.jsonl"))
    monkeypatch.setenv("FAKE_SUMMARY", json.dumps({"oc_cam_miou": 50.0}))
    run_local(path, str(base), [], str(tmp_path / "runs"), jobs=2)
    runs = [json.loads(line) for line in (tmp_path / "trace.jsonl").read_text().splitlines()]
    threads = {Path(r["run"]).name.rsplit("=", 1)[-1]: r["threads"] for r in runs}
    assert threads == {"0": "4", "1": "2", "2": "2"}  # the first point alone, then two at a time


def test_local_sweep_refuses_to_run_inside_an_agent_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("WANDB_RUN_ID", "agentrun1")
    code, err = run_cli(["sweep", "experiments/sweeps/masking_depth.yaml", "--local", "--dry_run"], capsys)
    assert code == 2 and "WANDB_RUN_ID" in err


def fake_results() -> list[dict]:
    """Two seeds x three depths; each seed's points share one OC."""
    oc = {0: 40.0, 1: 44.0}
    cgnet = {(0, 0): 50.0, (0, 1): 54.0, (3, 0): 60.0, (3, 1): 58.0, (5, 0): 45.0, (5, 1): 47.0}
    return [
        {"point": {"seed": seed, "cgnet.model.masking_depth": depth}, "run": f"runs/s-{depth}-{seed}", "seed": seed,
         "oc_cam_miou": oc[seed], "cgnet_cam_miou": value, "pseudo_label_miou": None}
        for (depth, seed), value in cgnet.items()
    ]  # fmt: skip


def test_sweep_results_give_mean_and_spread_over_seeds_per_value_and_the_oc_reference(tmp_path):
    results = fake_results()
    rows = aggregate(results)
    assert [r["params"] for r in rows] == [{"cgnet.model.masking_depth": d} for d in (0, 3, 5)]
    depth3 = rows[1]["cgnet_cam_miou"]
    assert depth3["n"] == 2 and depth3["mean"] == 59.0 and depth3["std"] == pytest.approx(2**0.5, abs=1e-4)
    assert rows[0]["oc_cam_miou"]["mean"] == 42.0 and rows[0]["pseudo_label_miou"]["n"] == 0
    assert reference(results) | {} == {"metric": "oc_cam_miou", "n": 2, "mean": 42.0,
                                       "std": pytest.approx(2.8284, abs=1e-4), "min": 40.0, "max": 44.0}  # fmt: skip
    sweep = {"parameters": {"seed": {"values": [0, 1]}}, "metric": {"name": "cgnet_cam_miou"}}
    data = write_results(tmp_path, "s", sweep, results)
    table = (tmp_path / "table.md").read_text()
    assert "| 3 | 2 | 42.00 ± 2.83 | 59.00 ± 1.41 |" in table
    assert "Reference: ordinary classifier CAM mIoU 42.00 ± 2.83 (n = 2 seeds)" in table
    assert (tmp_path / "cgnet_cam_miou.png").stat().st_size > 1000
    assert load_results(tmp_path / "results.json") == json.loads(json.dumps(data))
    assert format_tables(data) + "\n" == table
