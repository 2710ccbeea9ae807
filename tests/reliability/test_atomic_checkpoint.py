"""Checkpoints are written atomically beside their target: a disk full while saving (``OSError(ENOSPC)`` injected
into the writer) leaves the previous ``last.ckpt`` intact and no temporary file, for plain saves and for
``save_last="link"``; every stage's trainer gets this checkpoint IO unless one is configured."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from reliability_helpers import tiny_classifier_args

from caef.callbacks import AtomicCheckpointIO, install_atomic_checkpoints
from caef.stage_cli import stage_cli


def disk_full_after(monkeypatch: pytest.MonkeyPatch, good_saves: int) -> list[int]:
    """``torch.save`` works ``good_saves`` times, then writes a few bytes and fails as a full disk does."""
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) <= good_saves:
            return real_save(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save)
    return calls


def trainer_for(folder: Path, max_steps: int, save_last: bool | str = True) -> pl.Trainer:
    trainer = pl.Trainer(
        default_root_dir=folder, max_steps=max_steps, logger=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0,
        callbacks=[ModelCheckpoint(dirpath=folder, every_n_train_steps=1, save_last=save_last)],
    )  # fmt: skip
    install_atomic_checkpoints(trainer)
    return trainer


def assert_intact_last(folder: Path, step: int) -> None:
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == step
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("save_last", [True, "link"])
def test_disk_full_keeps_the_previous_last_ckpt(tmp_path: Path, monkeypatch, save_last) -> None:
    trainer_for(tmp_path, 2, save_last=save_last).fit(BoringModel())
    assert_intact_last(tmp_path, 2)
    disk_full_after(monkeypatch, good_saves=0)
    with pytest.raises(OSError, match="No space left"):
        trainer_for(tmp_path, 4, save_last=save_last).fit(BoringModel(), ckpt_path=tmp_path / "last.ckpt")
    assert_intact_last(tmp_path, 2)


class BiggerModel(BoringModel):
    """A model whose checkpoint is larger than BoringModel's, so its save needs more room than the old file frees."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Sequential(torch.nn.Linear(32, 2048), torch.nn.Linear(2048, 2))


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 1 MiB tmpfs: another file system than ``$TMPDIR``, as run folders on shared storage are."""
    mount = tmp_path / "fs"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> None:
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_disk_full_on_the_run_folders_file_system(small_fs: Path) -> None:
    def trainer() -> pl.Trainer:
        last_only = ModelCheckpoint(dirpath=small_fs, save_top_k=0, save_last=True, enable_version_counter=False)
        trainer = pl.Trainer(
            default_root_dir=small_fs, max_steps=2, logger=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0, callbacks=[last_only],
        )  # fmt: skip
        install_atomic_checkpoints(trainer)
        return trainer

    trainer().fit(BoringModel())
    assert_intact_last(small_fs, 2)
    before = (small_fs / "last.ckpt").read_bytes()
    fill(small_fs)  # the disk is full; the next checkpoint is larger than the one it replaces
    with pytest.raises(OSError, match="No space left"):
        trainer().fit(BiggerModel())
    assert (small_fs / "last.ckpt").read_bytes() == before
    assert_intact_last(small_fs, 2)


def test_save_replaces_atomically_and_follows_the_umask(tmp_path: Path, monkeypatch) -> None:
    io, target = AtomicCheckpointIO(), tmp_path / "sub" / "last.ckpt"
    old_mask = os.umask(0o022)
    try:
        io.save_checkpoint({"step": 1}, target)
    finally:
        os.umask(old_mask)
    assert target.stat().st_mode & 0o777 == 0o644
    disk_full_after(monkeypatch, good_saves=0)
    with pytest.raises(OSError):
        io.save_checkpoint({"step": 2}, target)
    assert torch.load(target, weights_only=False) == {"step": 1}
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]


def test_link_falls_back_to_an_atomic_copy(tmp_path: Path, monkeypatch) -> None:
    def no_symlinks(*args, **kwargs):
        raise OSError(errno.EPERM, "symlinks not permitted")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    trainer_for(tmp_path, 2, save_last="link").fit(BoringModel())
    assert (tmp_path / "last.ckpt").is_file() and not (tmp_path / "last.ckpt").is_symlink()
    assert_intact_last(tmp_path, 2)


def test_every_stage_trainer_writes_checkpoints_atomically(tmp_path: Path, tiny_synth: Path) -> None:
    args = tiny_classifier_args(tiny_synth, f"--run_dir={tmp_path / 'run'}", dataset="synthetic")[2:]
    trainer = stage_cli("classifier", args, run=False).trainer
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert all(c._link_checkpoint is not ModelCheckpoint._link_checkpoint for c in trainer.checkpoint_callbacks)


def test_a_configured_checkpoint_io_is_kept(tmp_path: Path) -> None:
    class MyIO(TorchCheckpointIO):
        pass

    trainer = pl.Trainer(default_root_dir=tmp_path, logger=False, plugins=[MyIO()])
    install_atomic_checkpoints(trainer)
    assert type(trainer.strategy.checkpoint_io) is MyIO
