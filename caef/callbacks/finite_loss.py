"""Stop a stage at the first non-finite training loss (or gradient), before it can reach the weights.

The loss is checked in ``on_before_backward``, i.e. before the backward pass and the optimiser step of that batch,
so the weights (and optimiser state) stay those of the last good step; the error stops the fit before any later
checkpoint is written. Checking at ``on_train_batch_end`` instead would come after the update, too late: a
``ModelCheckpoint(every_n_train_steps=...)`` or ``save_on_exception=True`` would then save NaN weights. Gradients are
checked in ``on_before_optimizer_step`` (a finite loss can still give inf/NaN gradients), except under fp16 AMP, whose
gradient scaler skips such steps by design.

Each check costs one host-device synchronisation per step (as reading ``loss.item()`` does); under DDP the decision is
reduced over ranks so that all of them stop together.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from caef.errors import CaefError


class NonFiniteLossError(CaefError):
    """The training loss or a gradient became NaN or infinite."""


class FiniteLossGuard(Callback):
    """Raise a :class:`NonFiniteLossError` (a ``CaefError``: the ``caef`` command exits with code 2) at the first
    non-finite training loss, naming the stage and the global step, before that step updates the weights.

    Args:
        stage: name used in the message (e.g. ``cgnet``); default: the LightningModule's class name.
        check_gradients: also stop at the first non-finite gradient (skipped under fp16 AMP, whose gradient
            scaler handles those by skipping the step).
    """

    def __init__(self, stage: str | None = None, check_gradients: bool = True):
        super().__init__()
        self.stage = stage
        self.check_gradients = check_gradients
        self._batch_idx = 0

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            value = _describe(loss) if bad else "finite here, non-finite on another rank"
            raise NonFiniteLossError(self._message(trainer, pl_module, f"non-finite training loss ({value})"))

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self.check_gradients or getattr(trainer.precision_plugin, "scaler", None) is not None:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        bad = bool(grads) and not bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=math.inf)))
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            names = [n for n, p in pl_module.named_parameters() if p.grad is not None and not p.grad.isfinite().all()]
            where = f"in {len(names)} parameter(s), e.g. {', '.join(names[:3])}" if names else "on another rank"
            raise NonFiniteLossError(
                self._message(trainer, pl_module, f"non-finite gradient ({where}) from a finite loss")
            )

    def _message(self, trainer: pl.Trainer, pl_module: pl.LightningModule, what: str) -> str:
        name = type(pl_module).__name__
        stage = f"stage {self.stage!r} ({name})" if self.stage else f"stage {name}"
        saved = [cb.last_model_path for cb in trainer.checkpoint_callbacks if getattr(cb, "last_model_path", "")]
        last = f" (last: {saved[0]})" if saved else ""
        return (
            f"{what} in {stage} at global step {trainer.global_step} (epoch {trainer.current_epoch}, batch "
            f"{self._batch_idx}); training stopped before this step updated the weights, so checkpoints hold only "
            f"weights from before it{last}. Lower the learning rate (model.lr), clip gradients "
            "(trainer.gradient_clip_val), or check the data (`caef data check`)"
        )


def _describe(loss: torch.Tensor) -> str:
    values = loss.detach().float().flatten()
    if values.numel() == 1:
        return str(values.item())
    return f"{int((~values.isfinite()).sum())} of {values.numel()} elements non-finite"
