"""Random-number-generator states in every checkpoint, so a resumed training continues as the uninterrupted one.

Lightning restores weights, optimiser and loop state from ``last.ckpt`` but not the Python / NumPy / torch RNG
states; a run resumed after a crash would then draw other shuffles, augmentations and dropout masks than the
run that did not crash. This callback saves the states with each checkpoint and restores them on resume. (Each
DataLoader worker is seeded from the main process's torch RNG at the start of every epoch, so restoring it
restores the workers' streams too; in-process loading, ``num_workers=0``, reseeds the augmentation from it
at every epoch start here.)
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.callbacks import Callback

from caef.data.transforms import reseed_augmentation

KEY = "caef_rng_states"


class RNGStateCheckpoint(Callback):
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[KEY] = _to_safe(_collect_rng_states(include_cuda=False))

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if KEY in checkpoint:
            _set_rng_states(_from_safe(checkpoint[KEY]))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        if loader is not None and getattr(loader, "num_workers", 1) == 0 and hasattr(loader, "dataset"):
            reseed_augmentation(loader.dataset, int(torch.randint(2**31 - 1, ())))


def _to_safe(states: dict[str, Any]) -> dict[str, Any]:
    """Only tensors, numbers, strings and lists: ``torch.load(weights_only=True)`` (LightningCLI's ckpt check) reads
    them, while NumPy arrays would make the whole checkpoint unreadable that way."""
    kind, keys, pos, has_gauss, cached = states["numpy"]
    version, internal, gauss = states["python"]
    return {
        "torch": states["torch"],
        "numpy": [kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }


def _from_safe(states: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    kind, keys, pos, has_gauss, cached = states["numpy"]
    version, internal, gauss = states["python"]
    return {
        "torch": states["torch"],
        "numpy": (kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached),
        "python": (version, tuple(internal), gauss),
    }
