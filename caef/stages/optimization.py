"""The reference optimiser for every trainable stage: parameter groups, SGD (or AdamW), poly decay per step.

Groups as PSA / OC-CSE: backbone weights at lr with weight decay, backbone biases (and BN) at 2x lr without;
head weights at ``head_lr_mult`` x lr with weight decay, head biases at 2x that without. Empty groups are
dropped. The schedule is ``lr * (1 - step / max_step) ** poly_power`` over the trainer's total steps.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from caef.models.backbones import Backbone


def reference_param_groups(
    backbone: Backbone, head: Iterable[nn.Parameter], lr: float, weight_decay: float, head_lr_mult: float
) -> list[dict[str, Any]]:
    weights, biases = backbone.trainable_parameters()
    head = [p for p in head if p.requires_grad]
    head_lr = head_lr_mult * lr
    groups = [
        {"params": weights, "lr": lr, "weight_decay": weight_decay},
        {"params": biases, "lr": 2 * lr, "weight_decay": 0.0},
        {"params": [p for p in head if p.dim() > 1], "lr": head_lr, "weight_decay": weight_decay},
        {"params": [p for p in head if p.dim() <= 1], "lr": 2 * head_lr, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def configure_reference_optimizer(
    module: pl.LightningModule, backbone: Backbone, head: Iterable[nn.Parameter]
) -> dict[str, Any]:
    """``configure_optimizers`` output from a module's hyper-parameters: ``lr``, ``weight_decay``,
    ``momentum``, ``poly_power``, ``head_lr_mult`` and ``optimizer`` (``sgd`` or ``adamw``)."""
    hp = module.hparams
    groups = reference_param_groups(backbone, head, hp.lr, hp.weight_decay, hp.head_lr_mult)
    if hp.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    elif hp.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
    else:
        raise ValueError(f"model.optimizer must be 'sgd' or 'adamw', got {hp.optimizer!r}")
    max_steps = max(1, int(module.trainer.estimated_stepping_batches))
    power = hp.poly_power
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, 1.0 - min(step, max_steps) / max_steps) ** power
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
