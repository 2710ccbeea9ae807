"""Merge DeepLab's latest evaluation (val mIoU, per-class IoU, label source) into the run's ``summary.json``."""

from __future__ import annotations

from typing import ClassVar

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_only

from caef.io import update_json
from caef.run_layout import SUMMARY, RunPaths
from caef.stages.deeplab import LABEL_SOURCES


class SegmentationScore(pl.Callback):
    """Merge the latest DeepLab evaluation into a run's summary JSON (rank 0), after validation and test.

    Writes ``<key>_miou`` (percent, 2 decimals), ``<key>_iou`` ({class: IoU or None}), ``<key>_label_source``,
    ``<key>_evaluation`` (how the mIoU was computed: ``plain``, ``flip, dense CRF``, ...) and ``<key>_diagnostics``
    (percent: ``missed_foreground``, ``wrong_class``, ``miou_given_classes`` or, with CRF, ``miou_without_crf``; see
    :mod:`caef.stages.deeplab`: where the errors are, not a result to report).
    ``summary_key`` None: ``deeplab_val`` for pseudo labels, ``fully_supervised_val`` for ground truth.
    """

    #: where it reads and writes under the run folder when those arguments are unset (caef.run_layout)
    run_paths: ClassVar[RunPaths] = {"summary_file": (SUMMARY, None)}

    def __init__(self, summary_file: str | None = None, summary_key: str | None = None):
        self.summary_file, self.summary_key = summary_file, summary_key

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._write(pl_module)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(pl_module)

    @rank_zero_only
    def _write(self, pl_module: pl.LightningModule) -> None:
        result = getattr(pl_module, "last_result", None)
        if self.summary_file is None or result is None:
            return
        source = pl_module.hparams.label_source
        source = source if source in LABEL_SOURCES else "pseudo"
        key = self.summary_key or ("deeplab_val" if source == "pseudo" else "fully_supervised_val")
        diagnostics = {k: round(v * 100, 2) for k, v in (result.get("diagnostics") or {}).items()}
        scores = {f"{key}_miou": round(result["miou"] * 100, 2), f"{key}_iou": result["iou"]}
        scores |= {f"{key}_label_source": source}
        scores |= {f"{key}_evaluation": result["evaluation"]} if "evaluation" in result else {}
        update_json(self.summary_file, scores | ({f"{key}_diagnostics": diagnostics} if diagnostics else {}))
