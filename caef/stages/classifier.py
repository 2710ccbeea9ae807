"""Stage 1: the ordinary classifier (OC), a multi-label CNN trained with BCE on pooled CAMs."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from caef.stages.cam_module import CAMModule


class ClassifierModule(CAMModule):
    """The ordinary classifier; arguments as :class:`CAMModule` (``head_lr_mult=10`` as PSA's ``res38_cls``)."""

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        logits = self.net.logits(self.cams_of(batch["image"]))
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch["label"])
        self.log("train/loss", loss, prog_bar=True)
        return loss
