"""Interrupted work loses nothing: offline stages redo only missing files, killed pipelines resume, results match.

The fast test leaves an offline stage half done (as a SIGKILL would: some outputs complete, a temporary file
half-written) and reruns it. The slow test SIGKILLs a whole `caef pipeline` during a training stage and again
during an offline stage, reruns it, and compares with an uninterrupted run of the same seed.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from caef.cam_files import save_cams
from caef.data.datamodule import open_source
from caef.data.source import IGNORE_INDEX, read_mask
from caef.stages.crf import run_crf_seeds

ROOT = Path(__file__).resolve().parents[2]


def _write_cams(source, cam_dir: Path, ids: list[str]) -> None:
    for image_id in ids:
        truth = source.read_mask(image_id, "train_aug")
        clean = np.where(truth == IGNORE_INDEX, 0, truth)
        cams = torch.stack(
            [torch.from_numpy((clean == k).astype(np.float32)) * 0.8 for k in range(1, source.num_classes)]
        )
        save_cams(cam_dir / f"{image_id}.npz", cams, cams.flatten(1).amax(1))


def test_offline_stage_redoes_only_missing_files_and_ignores_partial_ones(tmp_path, tiny_synth):
    source = open_source("synthetic", str(tiny_synth))
    ids = source.split_ids("train_aug")[:10]
    _write_cams(source, tmp_path / "cams", ids)
    source.split_ids = lambda split: ids  # a 10-image split
    run_crf_seeds(source, "train_aug", tmp_path / "cams", tmp_path / "whole", workers=1, progress=False)

    out = tmp_path / "resumed"  # the state a SIGKILL leaves: 4 images complete, one temp file half-written
    for sub in ("low", "high"):
        (out / sub).mkdir(parents=True)
        for image_id in ids[:4]:
            (out / sub / f"{image_id}.png").write_bytes((tmp_path / "whole" / sub / f"{image_id}.png").read_bytes())
        (out / sub / f".{ids[4]}.abc123.tmp.png").write_bytes(b"\x89PNG half")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png") if not p.name.startswith(".")}
    time.sleep(0.01)
    stats = run_crf_seeds(source, "train_aug", tmp_path / "cams", out, workers=1, progress=False)
    assert stats["skipped"] == 4 and stats["processed"] == 6
    assert all(p.stat().st_mtime_ns == t for p, t in before.items()), "a finished output was rewritten"
    for sub in ("low", "high"):
        for image_id in ids:
            np.testing.assert_array_equal(
                read_mask(out / sub / f"{image_id}.png", source.num_classes),
                read_mask(tmp_path / "whole" / sub / f"{image_id}.png", source.num_classes),
            )


def _pipeline_cmd(runs: Path, name: str, root: Path, config) -> list[str]:
    return [
        sys.executable, "-m", "caef.cli", "pipeline", "experiments/demo.yaml", f"--runs_root={runs}", f"--name={name}",
        f"--data_root={root}", "--until=pseudo", f"--all.data.synth.num_images={config.num_images}",
        f"--all.data.synth.size={config.size}", f"--all.data.synth.num_classes={config.num_classes}",
        "--all.data.crop_size=48", "--all.data.resize_long=[40, 56]", "--all.data.batch_size=4",
        "--all.data.num_workers=0", "--all.trainer.logger=false", "--all.trainer.enable_progress_bar=false",
        "--all.trainer.max_epochs=3", "--all.trainer.limit_train_batches=6",
        "--classifier.data.score_limit=4", "--cgnet.data.score_limit=4",
        "--classifier.trainer.check_val_every_n_epoch=3", "--cgnet.trainer.check_val_every_n_epoch=3",
        "--classifier.model.msf_scales=[1.0]", "--cgnet.model.msf_scales=[1.0]", "--cams.model.msf_scales=[1.0]",
        "--affinity.data.crop_size=72", "--affinity.model.radius=2", "--pseudo.model.radius=2", "--crf.workers=1",
    ]  # fmt: skip


def _run_until(cmd: list[str], env: dict, ready, timeout: float = 600, allow_finish: bool = False) -> bool:
    """Start the pipeline in its own process group and SIGKILL the whole group once ``ready()`` holds; True if
    killed (with ``allow_finish``, a pipeline that ends first returns False)."""
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            assert allow_finish and process.returncode == 0, "the pipeline ended before the kill point"
            return False
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return True


@pytest.mark.slow
def test_killed_pipeline_resumes_without_redoing_stages_and_matches_an_uninterrupted_run(
    tmp_path, tiny_synth, tiny_synth_config
):
    """SIGKILL the whole pipeline at a random point of each stage in turn (rerunning after each kill), then finish
    it: no finished stage is redone, no temporary file is left or read, and the metrics equal an uninterrupted
    run's."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    # separate runs roots: in one, the stage cache would copy the uninterrupted run's stages instead of running them
    subprocess.run(_pipeline_cmd(tmp_path / "a", "whole", tiny_synth, tiny_synth_config), cwd=ROOT, env=env,
                   check=True, capture_output=True)  # fmt: skip
    cmd = _pipeline_cmd(tmp_path / "b", "killed", tiny_synth, tiny_synth_config)
    run = tmp_path / "b" / "killed"
    rng = random.Random(0)

    def stages() -> dict:
        try:
            return json.loads((run / "manifest.json").read_text())["stages"]
        except (OSError, json.JSONDecodeError):
            return {}

    killed_in = []
    for stage in ("classifier", "cgnet", "cams", "crf", "affinity", "pseudo"):
        if stages().get(stage, {}).get("status") == "done":
            continue  # an earlier rerun already got past it
        finished_before = {s: e["finished"] for s, e in stages().items() if e.get("status") == "done"}
        delay = rng.uniform(0.0, 2.0)
        started: list[float] = []

        def ready(stage=stage, delay=delay, started=started) -> bool:
            if stages().get(stage, {}).get("status") != "running":
                return False
            started.append(started[0] if started else time.monotonic())
            return time.monotonic() - started[0] >= delay

        if _run_until(cmd, env, ready, allow_finish=True):
            killed_in.append(stage)
        after = stages()
        assert all(after[s]["finished"] == t for s, t in finished_before.items()), "a finished stage was redone"
    assert len(killed_in) >= 3, killed_in  # most kills land inside their stage
    written = {p.name: p.stat().st_mtime_ns for p in (run / "pseudo").glob("*.png")}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    manifest = stages()
    assert all(manifest[s]["status"] == "done" for s in ("classifier", "cgnet", "cams", "crf", "affinity", "pseudo"))
    assert all((run / "pseudo" / n).stat().st_mtime_ns == t for n, t in written.items()), "pseudo labels redone"
    assert not list(run.rglob(".*.tmp*")), "temporary files left behind"
    whole = json.loads((tmp_path / "a" / "whole" / "summary.json").read_text())
    killed = json.loads((run / "summary.json").read_text())
    for key in ("oc_cam_miou", "cgnet_cam_miou", "crf_seed_miou", "pseudo_label_miou"):
        assert killed[key] == whole[key], key
