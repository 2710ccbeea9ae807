"""A run folder's layout, the one place that knows it: where each stage's results go under ``--run_dir``.

Read by the stage CLI (:func:`fill_run_layout`: unset output paths of a stage and of the callbacks, which declare
which of their arguments take which path in ``run_paths``), by the pipeline (the paths it passes from one stage to
the next) and by the stage graph (what a finished stage must have left). Also the validation schedule every ``fit``
is held to.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from caef.errors import CaefError

#: paths under the run folder; ``{stage}`` is the stage folder's name (``classifier``, ``cgnet``, ...)
STAGE_DIR = "{stage}"
CHECKPOINT = "{stage}/last.ckpt"
CAM_DIR = "cams/{stage}"
SEED_DIR = "seeds"
PSEUDO_DIR = "pseudo"
SUMMARY = "summary.json"

#: what a callback declares as ``run_paths``: init argument -> (layout path, stage or None for the running stage)
RunPaths = dict[str, tuple[str, "str | None"]]


def layout_path(template: str, stage: str = "") -> str:
    """A layout path relative to the run folder, e.g. ``layout_path(CHECKPOINT, "cgnet")`` -> ``cgnet/last.ckpt``."""
    return template.format(stage=stage)


def _declared_run_paths(class_path: str | None) -> RunPaths:
    """The ``run_paths`` a callback class declares (inherited by subclasses); Lightning's ``ModelCheckpoint``
    writes to the stage folder."""
    if not class_path:
        return {}
    import importlib

    from lightning.pytorch.callbacks import ModelCheckpoint

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return {}  # the parser reports an unknown class itself
    if isinstance(cls, type) and issubclass(cls, ModelCheckpoint):
        return {"dirpath": (STAGE_DIR, None)}
    return dict(getattr(cls, "run_paths", {}) or {})


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
    if config.trainer.get("default_root_dir") in (None, "."):
        config.trainer.default_root_dir = str(run_dir / layout_path(STAGE_DIR, stage))
    for callback in config.trainer.get("callbacks") or []:
        for key, (template, owner) in _declared_run_paths(getattr(callback, "class_path", None)).items():
            if callback.init_args.get(key) is None:
                callback.init_args[key] = str(run_dir / layout_path(template, owner or stage))
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
        config.data.seed_dir = str(run_dir / layout_path(SEED_DIR))
    model = config.model.get("init_args", config.model)  # subclass mode: class_path + init_args
    if "ordinary_classifier" in model and not model.ordinary_classifier:
        model.ordinary_classifier = str(run_dir / layout_path(CHECKPOINT, "classifier"))


def validate_last_epoch(trainer: Any) -> str | None:
    """Make the final step a validation step: the scores in ``summary.json`` must be those of the weights the
    next stage uses. Returns the note saying what changed, or None.

    Epochs (``check_val_every_n_epoch``): Lightning validates only when it divides the epoch number, so
    ``--trainer.max_epochs=6`` under a config's ``check_val_every_n_epoch: 12`` would score nothing; where it does
    not divide ``max_epochs`` it becomes the largest divisor of ``max_epochs`` not above it (a sweep may set
    ``max_epochs`` alone). Steps (``check_val_every_n_epoch: null``, an integer ``val_check_interval``, the
    DeepLab recipes): the interval likewise becomes a divisor of ``max_steps``; and where ``max_epochs`` is set
    too (a quick ``--all.trainer.max_epochs=1``), training may stop at an epoch's end between two checks, so the run
    is bounded by its epochs alone and validated after the last one."""
    every, epochs = trainer.get("check_val_every_n_epoch"), trainer.get("max_epochs")
    interval, steps = trainer.get("val_check_interval"), trainer.get("max_steps")
    if every is None and _positive_int(interval) and _positive_int(steps):
        if _positive_int(epochs):
            trainer.max_steps, trainer.check_val_every_n_epoch, trainer.val_check_interval = -1, epochs, 1.0
            return (
                f"trainer.max_epochs={epochs} with the step-based trainer.max_steps={steps}: training for "
                f"{epochs} epoch(s) and validating after the last (not every {interval} steps)"
            )
        if steps % interval:
            trainer.val_check_interval = _largest_divisor(steps, interval)
            return (
                f"trainer.val_check_interval={interval} does not divide trainer.max_steps={steps}, so the last step "
                f"would not be scored; using val_check_interval={trainer.val_check_interval}"
            )
        return None
    if _positive_int(every) and _positive_int(interval) and interval > 1:
        raise CaefError(
            f"trainer.check_val_every_n_epoch={every} with trainer.val_check_interval={interval} (a step count) "
            "validates inside epochs of at least that many batches only; set trainer.check_val_every_n_epoch=null "
            "to validate every val_check_interval steps, or trainer.val_check_interval=1.0 to validate by epochs"
        )
    if not _positive_int(every) or not _positive_int(epochs) or epochs % every == 0:
        return None
    trainer.check_val_every_n_epoch = _largest_divisor(epochs, every)
    return (
        f"trainer.check_val_every_n_epoch={every} does not divide trainer.max_epochs={epochs}, so the last epoch "
        f"would not be scored; using check_val_every_n_epoch={trainer.check_val_every_n_epoch}"
    )


def _largest_divisor(total: int, at_most: int) -> int:
    """The largest divisor of ``total`` not above ``at_most``: a validation interval that ends on the last step."""
    return max(d for d in range(1, min(at_most, total) + 1) if total % d == 0)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
