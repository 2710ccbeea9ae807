"""DDP through Lightning on the CPU (gloo, 2 processes) for the CAM stages, run the way users run it:
``caef <stage> <fit|validate|predict> ... --trainer.devices=2 --trainer.strategy=ddp`` in a subprocess, whose
launcher starts the second rank by re-running the command.

What must hold: a 2-process evaluation of a checkpoint scores exactly what a 1-process one does (every image
on exactly one rank, none repeated to even out the ranks; the confusion matrices summed over the ranks; rank 0
writes the summary), fit works for both stages, and predict writes every image's CAM file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import caef
from caef.cli import main
from caef.models.cam_net import build_cam_net

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]


def tiny_args(root: Path, synth) -> list[str]:
    return [
        f"--data.root={root}", f"--data.synth.num_images={synth.num_images}", f"--data.synth.size={synth.size}",
        f"--data.synth.num_classes={synth.num_classes}", f"--data.synth.seed={synth.seed}", "--data.crop_size=48",
        "--data.resize_long=[40, 56]", "--data.batch_size=4", "--data.eval_batch_size=4", "--data.num_workers=0",
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.check_val_every_n_epoch=1",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--model.msf_scales=[1.0]",
    ]  # fmt: skip


def run_ddp(args: list[str], cwd: Path, timeout: float = 180, **environ: str) -> None:
    """``caef ARGS`` on 2 CPU processes, in ``cwd``: a fresh interpreter, so that Lightning's launcher can re-run
    it."""
    env = {
        **os.environ,  # W&B is disabled by the conftest's sandbox
        # the ranks import the caef this test imports
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(caef.__file__).parents[1]), os.environ.get("PYTHONPATH")])
        ),
        "OMP_NUM_THREADS": "1",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        **environ,
    }
    for var in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK"):
        env.pop(var, None)  # Lightning picks a free port for each run
    command = [sys.executable, "-m", "caef.cli", *args, *DDP]
    # a session of its own: on a timeout (a rank waiting for another forever) every rank is killed with it
    with subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    ) as proc:
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            pytest.fail(f"{' '.join(command)} did not finish in {timeout} s:\n{output[-6000:]}")
    assert proc.returncode == 0, f"{' '.join(command)} failed ({proc.returncode}):\n{output[-6000:]}"
    assert "Starting with 2 processes" in output and "distributed_backend=gloo" in output, output[-3000:]


def odd_score_limit(root: Path) -> int:
    """An odd number of the tiny tree's scoring images: 2 ranks cannot split them evenly, so a padding sampler
    would score one of them twice."""
    count = len((root / "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt").read_text().split())
    assert count >= 3
    return count if count % 2 else count - 1


def save_oc_checkpoint(path: Path, num_classes: int) -> Path:
    """A (random) ordinary classifier in caef's checkpoint layout, for a CGNet to erase against."""
    net = build_cam_net("resnet38", num_classes, width=0.0625)
    hparams = {"backbone": "resnet38", "num_classes": num_classes, "backbone_options": {"width": 0.0625}}
    torch.save({"hyper_parameters": hparams, "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


def cam_scores(summary_file: Path, key: str) -> tuple[float, float, dict[str, float]]:
    summary = json.loads(summary_file.read_text())
    return summary[f"{key}_cam_miou"], summary[f"{key}_cam_threshold"], summary[f"{key}_cam_iou"]


def assert_same_scores(a: tuple, b: tuple) -> None:
    """Same mIoU and threshold, per-class IoU within 1e-6 (what summary.json keeps: 6 decimals)."""
    assert a[:2] == b[:2]
    assert a[2].keys() == b[2].keys()
    for name in a[2]:
        assert (a[2][name] is None) == (b[2][name] is None), name
        assert a[2][name] is None or abs(a[2][name] - b[2][name]) <= 1e-6, (name, a[2][name], b[2][name])


def test_cgnet_ddp_fit_then_two_process_validation_equals_one_process(tmp_path, tiny_synth, tiny_synth_config):
    """A 2-process CGNet fit (its validation scored under DDP), then its checkpoint validated by 1 and 2 processes:
    the three scores agree (all three are of the same weights)."""
    oc = save_oc_checkpoint(tmp_path / "oc.ckpt", tiny_synth_config.num_classes + 1)
    config = ["--config", str(EXPERIMENTS / "cgnet" / "demo.yaml"), *tiny_args(tiny_synth, tiny_synth_config)]
    config += [f"--model.ordinary_classifier={oc}", f"--data.score_limit={odd_score_limit(tiny_synth)}"]
    run_ddp(["cgnet", "fit", *config, f"--run_dir={tmp_path / 'fit'}"], tmp_path)
    ckpt = tmp_path / "fit" / "cgnet" / "last.ckpt"
    assert ckpt.is_file()
    during_fit = cam_scores(tmp_path / "fit" / "summary.json", "cgnet")

    assert main(["cgnet", "validate", *config, f"--run_dir={tmp_path / 'one'}", f"--ckpt_path={ckpt}"]) == 0
    one_process = cam_scores(tmp_path / "one" / "summary.json", "cgnet")
    run_ddp(["cgnet", "validate", *config, f"--run_dir={tmp_path / 'two'}", f"--ckpt_path={ckpt}"], tmp_path)
    two_processes = cam_scores(tmp_path / "two" / "summary.json", "cgnet")

    assert_same_scores(two_processes, one_process)
    assert_same_scores(during_fit, one_process)
    assert 0 <= one_process[0] <= 100
    # classification AP gathers every rank's scores: the same as one process's, class by class
    ap_one, ap_two = (json.loads((tmp_path / r / "summary.json").read_text())["cgnet_cls_ap"] for r in ("one", "two"))
    assert ap_one.keys() == ap_two.keys() and all(v is not None for v in ap_one.values())
    assert all(abs(ap_one[k] - ap_two[k]) <= 1e-6 for k in ap_one), (ap_one, ap_two)


@pytest.mark.slow
def test_classifier_cgnet_and_cam_export_all_on_two_processes(tmp_path, tiny_synth, tiny_synth_config):
    """The whole CAM chain under DDP: the OC trains, the CGNet trains against it, the CGNet exports its CAMs
    (each rank writes its own share of the split: every image gets its file)."""
    run_dir = tmp_path / "run"
    score_limit = odd_score_limit(tiny_synth)
    common = [*tiny_args(tiny_synth, tiny_synth_config), f"--run_dir={run_dir}", f"--data.score_limit={score_limit}"]
    # with the demo config's W&B logger (offline): one W&B run, the CAM overlays logged by rank 0 alone
    with_wandb = [a for a in common if a != "--trainer.logger=false"]
    run_ddp(["classifier", "fit", "--config", str(EXPERIMENTS / "classifier" / "demo.yaml"), *with_wandb],
            tmp_path, WANDB_MODE="offline")  # fmt: skip
    assert (run_dir / "classifier" / "last.ckpt").is_file()
    assert len(list(tmp_path.rglob("offline-run-*"))) == 1
    overlays = list(tmp_path.rglob("offline-run-*/**/media/images/val/cams_*.png"))
    assert len(overlays) == min(8, (score_limit + 1) // 2)  # num_images: 8, of rank 0's share of the images
    cgnet = ["--config", str(EXPERIMENTS / "cgnet" / "demo.yaml"), *common]
    run_ddp(["cgnet", "fit", *cgnet], tmp_path)
    for key in ("oc", "cgnet"):
        miou, threshold, iou = cam_scores(run_dir / "summary.json", key)
        assert 0 <= miou <= 100 and 0.05 <= threshold <= 0.60 and len(iou) == tiny_synth_config.num_classes + 1

    run_ddp(["cgnet", "predict", *cgnet, f"--ckpt_path={run_dir / 'cgnet' / 'last.ckpt'}"], tmp_path)
    ids = (tiny_synth / "VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt").read_text().split()
    assert sorted(f.stem for f in (run_dir / "cams" / "cgnet").glob("*.npz")) == sorted(ids)
