"""`caef pipeline` on a tiny generated dataset: every stage, the summary, caching, reruns, bad configs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from caef.errors import CaefError
from caef.pipeline import ORDER, STAGES, Pipeline, PipelineConfig
from caef.pipeline_cli import format_summary, parse_args
from caef.pipeline_cli import main as pipeline_main

ROOT = Path(__file__).resolve().parents[1]


def tiny_flags(root: Path, config) -> list[str]:
    """Flags that shrink the demo pipeline to seconds per stage on the tiny generated dataset."""
    return [
        f"--data_root={root}",
        f"--all.data.synth.num_images={config.num_images}", f"--all.data.synth.size={config.size}",
        f"--all.data.synth.num_classes={config.num_classes}", "--all.data.crop_size=48",
        "--all.data.resize_long=[40, 56]", "--all.data.batch_size=4", "--all.data.num_workers=0",
        "--all.trainer.max_epochs=1", "--all.trainer.limit_train_batches=2", "--all.trainer.logger=false",
        "--all.trainer.enable_progress_bar=false",
        "--classifier.data.score_limit=4", "--cgnet.data.score_limit=4",
        "--classifier.trainer.check_val_every_n_epoch=1", "--cgnet.trainer.check_val_every_n_epoch=1",
        "--classifier.model.msf_scales=[1.0]", "--cgnet.model.msf_scales=[1.0]", "--cams.model.msf_scales=[1.0]",
        "--affinity.data.crop_size=72", "--affinity.model.radius=2", "--pseudo.model.radius=2",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_synth, tiny_synth_config):
    """One whole pipeline run (module scope: the tests below inspect and rerun it)."""
    runs = tmp_path_factory.mktemp("runs")
    argv = [str(ROOT / "experiments/demo.yaml"), "--name=tiny", f"--runs_root={runs}", "--seed=3",
            *tiny_flags(tiny_synth, tiny_synth_config)]  # fmt: skip
    assert pipeline_main(argv) == 0
    return runs / "tiny", argv


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def test_pipeline_runs_every_stage_and_summarises_them(tiny_run, capsys):
    run_dir, _ = tiny_run
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("oc_cam_miou", "cgnet_cam_miou", "crf_seed_miou", "pseudo_label_miou", "thresholded_cam_miou",
                "deeplab_val_miou", "fully_supervised_val_miou"):  # fmt: skip
        assert isinstance(summary[key], float) and 0 <= summary[key] <= 100, key
    assert 0 < summary["crf_seed_coverage"] <= 100
    assert summary["seed"] == 3 and summary["masking_depth"] == 0 and summary["cgnet_backbone"] == "resnet38"
    assert set(summary["stage_seconds"]) == set(ORDER) and summary["config_hash"]
    assert summary["versions"]["torch"]
    manifest = _manifest(run_dir)
    assert all(manifest["stages"][s]["status"] == "done" for s in ORDER)
    assert len(list((run_dir / "pseudo").glob("*.png"))) == len(list((run_dir / "cams" / "cgnet").glob("*.npz")))
    assert (run_dir / "fully_supervised" / "last.ckpt").is_file() and (run_dir / "deeplab" / "last.ckpt").is_file()
    report = (run_dir / "report.md").read_text()
    assert "Per-class IoU" in report and "Scoring images" in report and "Validation images" in report
    assert "| class | OC AP | CGNet AP |" in report
    for name, ap in summary["cgnet_cls_ap"].items():
        assert f"| {name} | {100 * summary['oc_cls_ap'][name]:.1f} | {100 * ap:.1f} |" in report
    for png in ("iou_per_class.png", "overlays_train.png", "overlays_val.png"):
        assert (run_dir / png).stat().st_size > 1000, png
    table = format_summary(summary)
    assert "pseudo labels" in table and f"{summary['pseudo_label_miou']:.2f}" in table
    assert summary["fully_supervised_val_evaluation"] == summary["deeplab_val_evaluation"] == "plain"
    (row,) = [line for line in table.splitlines() if line.startswith("DeepLab val (ground truth)")]
    assert f"{summary['fully_supervised_val_miou']:.2f}" in row and row.endswith("  (plain)")
    assert "| DeepLab on ground truth (val; plain) |" in report


def test_rerun_skips_finished_stages_and_a_changed_flag_reruns_only_its_stage(tiny_run, capsys):
    run_dir, argv = tiny_run
    before = _manifest(run_dir)
    assert pipeline_main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("unchanged -- skipped") == len(ORDER)
    assert _manifest(run_dir)["stages"] == before["stages"]
    assert pipeline_main([*argv, "--fully_supervised.model.lr=0.002"]) == 0
    after = _manifest(run_dir)["stages"]
    changed = [s for s in ORDER if after[s]["finished"] != before["stages"][s]["finished"]]
    assert changed == ["fully_supervised"]


def test_an_unfinished_stage_resumes_from_its_checkpoint(tiny_run, capsys):
    """A stage the manifest shows as running (its process died) reruns with --ckpt_path of its last checkpoint."""
    run_dir, argv = tiny_run
    manifest = _manifest(run_dir)
    manifest["stages"]["deeplab"]["status"] = "running"
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    args, overrides = parse_args(argv)
    config = PipelineConfig.load(args.config)
    config.name, config.runs_root, config.data_root, config.seed = "tiny", str(run_dir.parent), args.data_root, 3
    Pipeline(config, overrides).run(start="deeplab", until="deeplab", dry_run=True)
    assert f"--ckpt_path={run_dir / 'deeplab' / 'last.ckpt'}" in capsys.readouterr().out


def test_every_sweep_point_parses_as_pipeline_flags():
    """The argv a W&B agent builds for each point (`${args}`) is accepted and routed to the right stage."""
    from caef.sweep import grid_points, load_sweep, pipeline_argv

    for path in sorted((ROOT / "experiments" / "sweeps").glob("*.yaml")):
        sweep = load_sweep(path)
        points = grid_points(sweep["parameters"])
        assert len(points) >= 3, path
        for point in points:
            args, overrides = parse_args(pipeline_argv(sweep, point))
            PipelineConfig.load(ROOT / args.config)
            for name, value in point.items():
                if "." not in name:  # a pipeline flag (--seed)
                    assert getattr(args, name) == value, (path, name)
                    continue
                stage, key = name.split(".", 1)
                assert any(flag.startswith(f"--{key}=") for flag in overrides[stage]), (path, name)


def test_sweep_point_flags_reach_the_stage_cli(tmp_path, tiny_synth, tiny_synth_config):
    """A masking-depth sweep point parses with the cgnet stage's own LightningCLI (jsonargparse)."""
    from caef.stage_cli import stage_cli

    args, overrides = parse_args([str(ROOT / "experiments/demo.yaml"), "--cgnet.model.masking_depth=3",
                                  *tiny_flags(tiny_synth, tiny_synth_config)])  # fmt: skip
    config = PipelineConfig.load(args.config)
    config.runs_root, config.data_root = str(tmp_path), args.data_root
    argv = Pipeline(config, overrides).argv("cgnet")
    import torch

    from caef.models.cam_net import build_cam_net

    classes = tiny_synth_config.num_classes + 1
    net = build_cam_net("resnet38", classes, width=0.0625)
    oc = tmp_path / "oc.ckpt"
    hparams = {"backbone": "resnet38", "num_classes": classes, "backbone_options": {"width": 0.0625}}
    torch.save({"hyper_parameters": hparams, "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, oc)
    cli = stage_cli("cgnet", [*argv[2:], f"--model.ordinary_classifier={oc}"], run=False)
    assert cli.model.masking_depth == 3


def test_voc_full_without_data_fails_fast_with_instructions(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "caef.cli", "pipeline", "experiments/voc_full.yaml", f"--data_root={tmp_path}/none",
         f"--runs_root={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "not found" in result.stderr and "VOCdevkit" in result.stderr and "make data-check-voc" in result.stderr
    assert not (tmp_path / "voc_full").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nstages: {}\nbogus: 1\n", "unknown key(s) ['bogus']"),
        ("name: x\nstages: {segmenter: {config: a.yaml}}\n", "unknown stage 'segmenter'"),
        ("stages: {}\n", "missing key 'name'"),
        ("name: x\nstages: {cgnet: {}}\n", "needs a `config:`"),
        ("name: x\nstages: [\n", "not valid YAML"),
    ],
)
def test_bad_pipeline_configs_are_clear_errors(tmp_path, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(CaefError, match=None) as err:
        PipelineConfig.load(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_stage_flags_must_name_a_stage():
    with pytest.raises(SystemExit):
        parse_args(["experiments/demo.yaml", "--segmenter.model.lr=1"])
    _, overrides = parse_args(["experiments/demo.yaml", "--all.trainer.max_epochs=2"])
    lightning_stages = [s for s in ORDER if STAGES[s].command[0] != "crf"]
    assert sorted(overrides) == sorted(lightning_stages)


def test_local_sweep_shares_the_classifier_and_writes_table_and_plot(tmp_path, tiny_synth, tiny_synth_config):
    from caef.sweep import run_local

    sweep = tmp_path / "depth.yaml"
    sweep.write_text(
        "name: depth\nprogram: caef\nmetric: {name: cgnet_cam_miou}\n"
        "command:\n  - ${program}\n  - pipeline\n  - experiments/voc_full.yaml\n  - ${args}\n"
        "parameters:\n  cgnet.model.masking_depth:\n    values: [0, 4]\n"
    )
    extra = [*tiny_flags(tiny_synth, tiny_synth_config), "--until=cgnet"]
    results = run_local(sweep, str(ROOT / "experiments/demo.yaml"), extra, str(tmp_path / "runs"))
    assert [r["point"]["cgnet.model.masking_depth"] for r in results] == [0, 4]
    assert all(isinstance(r["cgnet_cam_miou"], float) for r in results)
    second = _manifest(Path(results[1]["run"]))["stages"]["classifier"]
    assert second["cached_from"].endswith("depth-masking_depth=0")  # trained once, copied for the second point
    out = tmp_path / "runs" / "sweeps" / "depth"
    assert (out / "cgnet_cam_miou.png").stat().st_size > 0
    assert "| cgnet.model.masking_depth |" in (out / "table.md").read_text()


def test_run_placeholders_in_stage_args_name_an_upstream_stage(tmp_path):
    """``{run}`` in a stage's args is the run folder; ``{run}/<stage>/`` makes that stage an input of it (ordering,
    fingerprint), so DeepLab initialised from the CGNet reruns when the CGNet does."""
    path = tmp_path / "p.yaml"
    path.write_text(
        f"name: x\nstages:\n  cgnet: {{config: {ROOT / 'experiments/cgnet/demo.yaml'}}}\n"
        f"  deeplab: {{config: {ROOT / 'experiments/deeplab/demo.yaml'}, "
        "args: ['--model.init_checkpoint={run}/cgnet/last.ckpt']}\n"
    )
    config = PipelineConfig.load(path)
    config.runs_root = str(tmp_path / "runs")
    pipeline = Pipeline(config)
    assert f"--model.init_checkpoint={tmp_path / 'runs' / 'x' / 'cgnet' / 'last.ckpt'}" in pipeline.argv("deeplab")
    assert pipeline.needs("deeplab") == ("pseudo", "cgnet")
    one = {"stages": {"cgnet": {"fingerprint": "a", "settings": "a"}}}
    other = {"stages": {"cgnet": {"fingerprint": "b", "settings": "b"}}}
    assert pipeline.fingerprints("deeplab", one) != pipeline.fingerprints("deeplab", other)
    path.write_text(path.read_text().replace("cgnet/last", "fully_supervised/last"))
    config = PipelineConfig.load(path)
    config.stages["fully_supervised"] = {"config": config.stages["deeplab"]["config"], "args": []}
    with pytest.raises(CaefError, match="runs after it"):
        Pipeline(config).needs("deeplab")
