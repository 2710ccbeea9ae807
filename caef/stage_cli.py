"""A LightningCLI per trainable stage: plain ``--key=value`` flags (what a W&B sweep agent passes), the run
layout filled from ``--run_dir``, atomic checkpoints and the safety callbacks on every trainer."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from caef.run_layout import fill_run_layout, pipeline_context, validate_last_epoch

#: stage name -> (LightningModule, LightningDataModule), imported lazily so `caef --help` is instant
STAGES: dict[str, tuple[str, str, str]] = {
    "classifier": ("caef.stages.classifier:ClassifierModule", "caef.data.datamodule:ClassificationDataModule",
                   "train the ordinary classifier; score / export its CAMs"),
    "cgnet": ("caef.stages.cgnet:CGNetModule", "caef.data.datamodule:ClassificationDataModule",
              "train the CGNet by class-specific adversarial erasing; score / export its CAMs"),
    "affinity": ("caef.stages.affinity:AffinityNetModule", "caef.data.affinity:AffinityDataModule",
                 "train AffinityNet on the CRF seeds; export its features for the random walk"),
    "deeplab": ("caef.stages.deeplab:DeepLabModule", "caef.data.datamodule:SegmentationDataModule",
                "train DeepLab on pseudo labels (or ground truth: the upper bound); score its segmentation"),
}  # fmt: skip


def import_object(path: str) -> Any:
    """``module:name`` -> the object (commands and stage classes are imported only when used)."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def stage_cli(stage: str, args: Sequence[str], run: bool = True):
    """Build (and by default run) the LightningCLI of ``stage`` on ``args``."""
    from lightning.pytorch.cli import LightningCLI

    class CaefCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument(
                "--run_dir", default="runs/default", help="run folder: <run_dir>/<stage>/ holds this stage's outputs"
            )
            parser.add_argument(
                "--stage_dir", default=None, help="folder name under run_dir for this stage (default: the stage name)"
            )
            target = "model.init_args.num_classes" if self.subclass_mode_model else "model.num_classes"
            parser.link_arguments("data.num_classes", target, apply_on="instantiate")

        def parse_arguments(self, parser, args) -> None:
            # `args` are explicit, so no warning about a command line also being there; sys.argv stays whole
            # because DDP's launcher starts the other ranks by re-running it
            self.config = parser.parse_args(args)

        def before_instantiate_classes(self) -> None:
            from caef.errors import check_writable_dir

            config = self.config[self.subcommand] if self.subcommand else self.config
            check_writable_dir(config.run_dir, "--run_dir", create=False)  # before anything, creating nothing
            fill_run_layout(config, config.get("stage_dir") or stage)
            if self.subcommand == "fit" and (note := validate_last_epoch(config.trainer)):
                warnings.warn(note, stacklevel=1)

        def _parse_ckpt_path(self) -> None:
            """An unreadable --ckpt_path is a one-line error naming the file, not a traceback."""
            from caef.errors import CaefError

            try:
                if self.subclass_mode_model:
                    self._merge_checkpoint_hyperparameters()
                else:
                    super()._parse_ckpt_path()
            except SystemExit:
                raise
            except Exception as exc:
                path = self.config[self.config.subcommand].get("ckpt_path")
                raise CaefError(
                    f"cannot read checkpoint {path} (--ckpt_path): {type(exc).__name__}: {exc}; copy it again or "
                    "point --ckpt_path at another checkpoint"
                ) from exc

        def _merge_checkpoint_hyperparameters(self) -> None:
            """LightningCLI's merge of a --ckpt_path's hyper-parameters over the command line, as ``init_args`` of the
            checkpoint's class (subclass mode): settings it does not record (DeepLab's evaluation options) keep their
            command-line values instead of falling back to the defaults."""
            subcommand = self.config.get("subcommand")
            path = self.config[subcommand].get("ckpt_path") if subcommand else None
            if not path or not Path(path).is_file():
                return
            import torch

            hparams = dict(torch.load(path, weights_only=True, map_location="cpu").get("hyper_parameters") or {})
            hparams.pop("_instantiator", None)
            current = self.config[subcommand].model
            class_path = hparams.pop("_class_path", None) or current.class_path
            if hparams:
                given = current.init_args.as_dict() if class_path == current.class_path else {}
                model = {"class_path": class_path, "init_args": {**given, **hparams}}
                self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)

        def instantiate_classes(self) -> None:
            """In subclass mode jsonargparse wraps a model's CaefError in a ValueError: the CaefError is re-raised."""
            from caef.errors import CaefError

            try:
                super().instantiate_classes()
            except ValueError as exc:
                cause = exc.__cause__
                while cause is not None and not isinstance(cause, CaefError):
                    cause = cause.__cause__
                if cause is None:
                    raise
                raise cause from None

        def after_instantiate_classes(self) -> None:
            """A --ckpt_path of another class count fails here, naming the file, before any work starts."""
            super().after_instantiate_classes()
            path = self.config[self.subcommand].get("ckpt_path") if self.subcommand else None
            if path and Path(path).is_file():
                import torch

                from caef.checkpoints import check_state_dict

                state = torch.load(path, map_location="cpu", mmap=True, weights_only=False).get("state_dict", {})
                check_state_dict(self.model, state, Path(path), "checkpoint (--ckpt_path)")

        def instantiate_trainer(self, **kwargs):
            """Every stage gets two safety callbacks unless its config already lists them: a non-finite loss stops
            it before the bad step (naming stage and step), and checkpoints carry the RNG states (exact resume);
            checkpoints are written atomically beside their target (unless a checkpoint IO plugin is configured)."""
            from caef.callbacks import FiniteLossGuard, RNGStateCheckpoint, install_atomic_checkpoints

            trainer = super().instantiate_trainer(**kwargs)
            install_atomic_checkpoints(trainer)
            present = {type(c) for c in trainer.callbacks}
            config = self.config[self.subcommand] if self.subcommand else self.config
            if FiniteLossGuard not in present:
                trainer.callbacks.append(FiniteLossGuard(stage=config.get("stage_dir") or stage))
            if RNGStateCheckpoint not in present:
                trainer.callbacks.append(RNGStateCheckpoint())
            return trainer

        def _prepare_subcommand_parser(self, klass, subcommand, **kwargs):
            parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
            if subcommand == "predict":
                parser.set_defaults(return_predictions=False)  # CAMs go to disk via CAMWriter, not to memory
            return parser

    # the frozen ordinary classifier is in eval mode on purpose
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
    from lightning.pytorch.cli import SaveConfigCallback
    from lightning.pytorch.loggers import WandbLogger

    class StageConfigSaver(SaveConfigCallback):
        """The resolved config goes to ``<run_dir>/<stage>/config.yaml`` (``config_<subcommand>.yaml`` for
        validate/test/predict), atomically, and into the W&B run's config; Lightning's default target,
        ``trainer.log_dir``, is the working directory under W&B."""

        def save_config(self, trainer, pl_module, stage: str) -> None:
            from caef.io import atomic_path

            stage = getattr(stage, "value", stage)  # Lightning passes a TrainerFn (a str enum: its str() is its name)
            name = "config.yaml" if stage == "fit" else f"config_{stage}.yaml"
            with atomic_path(Path(trainer.default_root_dir) / name) as tmp:
                self.parser.save(self.config, str(tmp), skip_none=False, overwrite=True, multifile=False)
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.experiment.config.update(self.config.as_dict(), allow_val_change=True)
                    if context := pipeline_context().get("config"):
                        logger.experiment.config.update({"pipeline": context}, allow_val_change=True)

    model_path, datamodule_path, _ = STAGES[stage]
    return CaefCLI(
        import_object(model_path),
        import_object(datamodule_path),
        args=list(args),
        run=run,
        subclass_mode_model=names_a_model_class(args),  # --model=mypkg.MyErasing: a subclass of the stage's module
        save_config_callback=StageConfigSaver,
        save_config_kwargs={"save_to_log_dir": False},
        parser_kwargs={"prog": f"caef {stage}"},
    )


def names_a_model_class(args: Sequence[str]) -> bool:
    """Whether the model is chosen by class path: ``--model=<class>`` / ``--model.class_path``, a ``--config`` with
    ``model.class_path``, or a ``--ckpt_path`` saved that way. Only then does the stage CLI take the model in
    LightningCLI's subclass mode; plain runs keep the plain model arguments (and jsonargparse's one-line errors)."""
    import yaml

    def value(index: int, arg: str) -> str | None:
        return arg.split("=", 1)[1] if "=" in arg else (args[index + 1] if index + 1 < len(args) else None)

    for index, arg in enumerate(args):
        if arg in ("--model", "--model.class_path") or arg.startswith(("--model=", "--model.class_path=")):
            return True
        if arg in ("-c", "--config") or arg.startswith("--config="):
            path = value(index, arg)
            try:
                model = (yaml.safe_load(Path(path).read_text()) or {}).get("model") if path else None
            except (OSError, yaml.YAMLError, AttributeError):
                continue  # the parser reports an unreadable config itself
            if isinstance(model, dict) and "class_path" in model:
                return True
        if arg == "--ckpt_path" or arg.startswith("--ckpt_path="):
            path = value(index, arg)
            if path and Path(path).is_file():
                import torch

                try:
                    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except Exception:  # noqa: BLE001 -- the CLI reports an unreadable checkpoint itself
                    continue
                if isinstance(checkpoint, dict) and "_class_path" in (checkpoint.get("hyper_parameters") or {}):
                    return True
    return False
