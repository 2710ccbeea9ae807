"""The ``caef`` command: a LightningCLI per trainable stage, plus data tools.

    caef classifier fit --config experiments/classifier/demo.yaml
    caef cgnet fit --config experiments/cgnet/demo.yaml --model.masking_depth=3
    caef cgnet predict --config experiments/cgnet/demo.yaml --ckpt_path runs/demo/cgnet/last.ckpt
    caef data check --root data/VOCdevkit --dataset voc
    caef data synth --out data/synth --num-images 1000 --size 128 --seed 0

Every hyper-parameter is a plain ``--key=value`` flag (what a W&B sweep agent passes).
"""

from __future__ import annotations

import argparse
import importlib
import netrc
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

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


#: offline (non-Lightning) steps: name -> (main function, help)
OFFLINE_COMMANDS: dict[str, tuple[str, str]] = {
    "crf": ("caef.stages.crf:main", "dense-CRF seeds (low/high alpha) from saved CAMs; shardable with --shard i/n"),
    "conformance": ("caef.conformance:main", "compare caef with local clones of the official OC-CSE and PSA code"),
    "dashboard": ("caef.dashboard:main", "build the masking-depth / backbone W&B reports (wandb-workspaces)"),
    "export": ("caef.interchange:export_main", "export CAMs (irn | psa format) or networks (psa | occse .pth)"),
    "import": ("caef.interchange:import_main", "import CAMs from IRN / PSA / OC-CSE .npy files"),
}


def _import(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def configure_wandb_mode(environ: dict[str, str] | None = None) -> str:
    """W&B never stops a run: without an API key (env or ~/.netrc), or with one but no route to the W&B server
    (a 3 s TCP probe of ``WANDB_BASE_URL``), it runs offline (`wandb sync` uploads later). An explicit
    ``WANDB_MODE`` always wins."""
    environ = os.environ if environ is None else environ
    if "WANDB_MODE" in environ:
        return environ["WANDB_MODE"]
    if not environ.get("WANDB_API_KEY") and not _netrc_has_wandb():
        environ["WANDB_MODE"] = "offline"
    elif not _wandb_reachable(environ):
        print("caef: W&B server unreachable: logging offline (upload later with `wandb sync`)", file=sys.stderr)
        environ["WANDB_MODE"] = "offline"
    return environ.get("WANDB_MODE", "online")


def _wandb_reachable(environ: dict[str, str], timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    url = urlparse(environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _netrc_has_wandb() -> bool:
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


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
                    if context := _pipeline_context().get("config"):
                        logger.experiment.config.update({"pipeline": context}, allow_val_change=True)

    model_path, datamodule_path, _ = STAGES[stage]
    return CaefCLI(
        _import(model_path),
        _import(datamodule_path),
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


def _pipeline_context() -> dict:
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
            context = _pipeline_context()
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


# -- data commands ---------------------------------------------------------------------------------
def _data_parser() -> argparse.ArgumentParser:
    from caef.data.scenes import ScenesConfig
    from caef.data.synthetic import SynthConfig

    parser = argparse.ArgumentParser(prog="caef data", description="dataset tools")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a dataset tree: counts per split and every problem found")
    check.add_argument("--root", required=True, help="dataset root (VOC: folder with VOCdevkit; COCO: with train2014)")
    check.add_argument("--dataset", choices=("voc", "coco", "synthetic"), default="voc")
    check.add_argument("--split", action="append", help="check only this split (repeatable)")
    check.add_argument("--cache-dir", default=None)
    synth = sub.add_parser("synth", help="write the generated dataset in the VOC 2012 layout")
    synth.add_argument("--out", required=True, help="output folder (created; must not hold other data)")
    defaults = SynthConfig()
    for f in fields(SynthConfig):
        value = getattr(defaults, f.name)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            synth.add_argument(f"--{f.name.replace('_', '-')}", type=type(value), default=value, dest=f.name)
    scenes = sub.add_parser("scenes", help="compose scenes of MNIST-family objects (Fashion-MNIST) as a VOC tree")
    scenes.add_argument("--out", required=True, help="output folder (created; must not hold other data)")
    scenes.add_argument("--source", default=None, help="folder of *-images-idx3-ubyte(.gz) + *-labels-idx1-ubyte(.gz)")
    scene_defaults = ScenesConfig()
    for f in fields(ScenesConfig):
        value = getattr(scene_defaults, f.name)
        flag, dest = f"--{f.name.replace('_', '-')}", f"scene_{f.name}"
        scenes.add_argument(flag, type=type(value), default=value, dest=dest, metavar=f.name.upper())
    return parser


def data_main(args: Sequence[str]) -> int:
    parsed = _data_parser().parse_args(list(args))
    if parsed.command == "check":
        from caef.data.checks import check_source
        from caef.data.datamodule import open_source

        source = open_source(parsed.dataset, parsed.root, parsed.cache_dir)
        report = check_source(source, parsed.split)
        print(report.format())
        return 0 if report.ok else 1
    if parsed.command == "scenes":
        from caef.data.scenes import ScenesConfig, describe, generate_scenes

        config = ScenesConfig(**{f.name: getattr(parsed, f"scene_{f.name}") for f in fields(ScenesConfig)})
        voc_dir = generate_scenes(Path(parsed.out), config, parsed.source)
        print(f"wrote {describe(config)} to {voc_dir}")
        return 0
    from caef.data.synthetic import SynthConfig, describe, generate

    config = SynthConfig(**{f.name: getattr(parsed, f.name) for f in fields(SynthConfig) if hasattr(parsed, f.name)})
    voc_dir = generate(Path(parsed.out), config)
    print(f"wrote {describe(config)} to {voc_dir}")
    return 0


def _usage() -> str:
    lines = ["usage: caef COMMAND ...", "", "commands:"]
    for name, (_, _, help_text) in STAGES.items():
        lines.append(f"  {name:<11} {help_text} (fit | validate | test | predict; --help for all flags)")
    for name, (_, help_text) in OFFLINE_COMMANDS.items():
        lines.append(f"  {name:<11} {help_text}")
    lines.append(f"  {'pipeline':<11} a whole experiment from one YAML (experiments/demo.yaml), cached and resumable")
    lines.append(f"  {'sweep':<11} a W&B sweep file: `caef sweep FILE --local` runs the grid offline: table + plot")
    lines.append(f"  {'data':<11} dataset tools: `caef data check` validates a tree, `caef data synth` generates one")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from caef.errors import CaefError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from caef import __version__

        print(f"caef {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command in STAGES:
            configure_wandb_mode()
            stage_cli(command, rest)
            return 0
        if command == "data":
            return data_main(rest)
        if command == "pipeline":
            configure_wandb_mode()
            from caef.pipeline_cli import main as pipeline_main

            return pipeline_main(rest)
        if command == "sweep":
            configure_wandb_mode()
            from caef.sweep import main as sweep_main

            return sweep_main(rest)
        if command in OFFLINE_COMMANDS:
            return _import(OFFLINE_COMMANDS[command][0])(rest)
    except CaefError as exc:
        print(f"caef: error: {exc}", file=sys.stderr)
        return 2
    print(f"caef: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
