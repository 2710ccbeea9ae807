"""An out-of-tree CAM method: a CGNet variant selected by class path, with no edit to caef.

    PYTHONPATH=examples caef cgnet fit --config experiments/cgnet/demo.yaml --model=my_erasing.ConstantWeightErasing \
        --model.erase_weight=0.5
    PYTHONPATH=examples caef pipeline experiments/demo.yaml --cgnet.model=my_erasing.ConstantWeightErasing

Any :class:`caef.stages.cgnet.CGNetModule` (or :class:`caef.stages.cam_module.CAMModule`) subclass works: its new
``__init__`` arguments become ``--model.<name>`` flags, the stage config's settings still apply, and the checkpoint
records the class, so ``caef cgnet predict`` and :func:`caef.api.load` rebuild it.
"""

from __future__ import annotations

from typing import Any

from caef.stages.cgnet import CGNetModule


class ConstantWeightErasing(CGNetModule):
    """The erasing loss with a constant weight instead of the reference's ramp ``0.3 + 0.05 * epoch``.

    Args:
        erase_weight: the constant weight of the erasing term.
        **kwargs: every :class:`CGNetModule` argument.
    """

    def __init__(self, erase_weight: float = 0.5, **kwargs: Any):
        super().__init__(**kwargs)
        self.constant_erase_weight = erase_weight

    def erase_weight(self) -> float:
        return self.constant_erase_weight if self.hparams.erasing else 0.0
