"""Where a stage's outputs go under ``--run_dir``, and the validation schedule every ``fit`` is held to.

Read by the stage CLI before any class is instantiated, so one flag (``--run_dir``) places a whole stage.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def pipeline_context() -> dict:
    """What ``caef pipeline`` tells its stages (W&B tags and the experiment's facts), via ``CAEF_PIPELINE``."""
    import json

    try:
        return json.loads(os.environ.get("CAEF_PIPELINE", "{}"))
    except json.JSONDecodeError:
        return {}


def fill_run_layout(config: Any, stage: str) -> None:
    """Fill every unset output path from ``run_dir`` so one flag places a whole stage:
    checkpoints and logs in ``<run_dir>/<stage>``, CAM files in ``<run_dir>/cams/<stage>``, CRF seeds in
    ``<run_dir>/seeds``, pseudo labels in ``<run_dir>/pseudo``, the summary in ``<run_dir>/summary.json``, W&B
    runs grouped by the run name; a CGNet's default OC is the run's classifier."""
    run_dir = Path(config.run_dir)
    stage_dir = run_dir / stage
    if config.trainer.get("default_root_dir") in (None, "."):
        config.trainer.default_root_dir = str(stage_dir)
    defaults = {
        "lightning.pytorch.callbacks.ModelCheckpoint": {"dirpath": stage_dir},
        "caef.callbacks.CAMScore": {"summary_file": run_dir / "summary.json"},
        "caef.callbacks.CAMWriter": {"output_dir": run_dir / "cams" / stage},
        "caef.callbacks.PseudoLabelWriter": {"cam_dir": run_dir / "cams" / "cgnet", "output_dir": run_dir / "pseudo"},
        "caef.stages.deeplab.SegmentationScore": {"summary_file": run_dir / "summary.json"},
        "caef.callbacks.PseudoLabelScore": {
            "pseudo_dir": run_dir / "pseudo",
            "cam_dir": run_dir / "cams" / "cgnet",
            "seed_dir": run_dir / "seeds",
            "summary_file": run_dir / "summary.json",
        },
    }
    for callback in config.trainer.get("callbacks") or []:
        for key, value in defaults.get(getattr(callback, "class_path", None), {}).items():
            if callback.init_args.get(key) is None:
                callback.init_args[key] = str(value)
    logger = config.trainer.get("logger")
    for lg in logger if isinstance(logger, list) else [logger]:
        if getattr(lg, "class_path", "").endswith("WandbLogger"):
            args = lg.init_args
            if args.get("save_dir") in (None, "", "."):  # WandbLogger's default "." is the working directory
                args.save_dir = str(run_dir)
            args.group = args.get("group") or run_dir.name
            args.job_type = args.get("job_type") or stage
            args.name = args.get("name") or f"{run_dir.name}-{stage}"
            context = pipeline_context()
            if context.get("tags"):
                args.tags = list(args.get("tags") or []) + [
                    t for t in context["tags"] if t not in (args.get("tags") or [])
                ]
    if "seed_dir" in config.data and not config.data.seed_dir:
        config.data.seed_dir = str(run_dir / "seeds")
    model = config.model.get("init_args", config.model)  # subclass mode: class_path + init_args
    if "ordinary_classifier" in model and not model.ordinary_classifier:
        model.ordinary_classifier = str(run_dir / "classifier" / "last.ckpt")


def validate_last_epoch(trainer: Any) -> str | None:
    """Make the final epoch a validation epoch: the scores in ``summary.json`` must be those of the weights the
    next stage uses. Lightning validates only when ``check_val_every_n_epoch`` divides the epoch number, so
    ``--trainer.max_epochs=6`` under a config's ``check_val_every_n_epoch: 12`` would score nothing. Where it
    does not divide ``max_epochs``, it becomes the largest divisor of ``max_epochs`` not above it (a sweep may
    set ``max_epochs`` alone); returns the note saying so, or None when nothing changed."""
    every, epochs = trainer.get("check_val_every_n_epoch"), trainer.get("max_epochs")
    if not isinstance(every, int) or not isinstance(epochs, int) or every < 1 or epochs < 1 or epochs % every == 0:
        return None
    trainer.check_val_every_n_epoch = max(d for d in range(1, min(every, epochs) + 1) if epochs % d == 0)
    return (
        f"trainer.check_val_every_n_epoch={every} does not divide trainer.max_epochs={epochs}, so the last epoch "
        f"would not be scored; using check_val_every_n_epoch={trainer.check_val_every_n_epoch}"
    )
