"""Checkpoints written atomically on their own file system: a ``.ckpt`` either exists complete or keeps its old
content.

Lightning's default ``TorchCheckpointIO`` goes through an fsspec transaction that writes to ``$TMPDIR`` and then
moves the file; where ``$TMPDIR`` is another file system (runs on shared storage, ``/tmp`` local) the move is a
copy onto the final name, so a full disk leaves a truncated ``last.ckpt`` that every resume then picks. Here the
checkpoint goes to a temporary file beside the target, is fsynced and renamed over it (``os.replace``, atomic on
one file system); on any error the temporary file is removed and the previous checkpoint is untouched. The file is
created with mode ``0o666`` minus the umask, like any file the user writes.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from caef.io import fsync_dir


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A binary file open for writing that replaces ``path`` only when the block succeeds, after an fsync."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves go through :func:`atomic_file` (remote URLs keep Lightning's path)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_file(path) as f:
            torch.save(checkpoint, f)


def atomic_link_checkpoint(trainer: Any, filepath: str, linkpath: str) -> None:
    """``ModelCheckpoint(save_last="link")``'s update of ``last.ckpt``, atomic: the new symlink (or, where symlinks
    are refused, a copy) is made under a temporary name and renamed over the old one, which Lightning removes first."""
    if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
        link = Path(linkpath)
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)
        tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            os.symlink(os.path.relpath(filepath, link.parent), tmp)
        except OSError:
            with open(filepath, "rb") as src, atomic_file(link) as dst:
                shutil.copyfileobj(src, dst)
        else:
            try:
                os.replace(tmp, link)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
    trainer.strategy.barrier()


def install_atomic_checkpoints(trainer: Any) -> None:
    """Make every checkpoint write of ``trainer`` atomic: Lightning's default checkpoint IO becomes
    :class:`AtomicCheckpointIO` (one the user configured, e.g. through ``trainer.plugins``, is kept), and each
    ``ModelCheckpoint`` links ``last.ckpt`` with :func:`atomic_link_checkpoint`."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            callback._link_checkpoint = atomic_link_checkpoint  # shadows the non-atomic staticmethod
