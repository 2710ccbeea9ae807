"""Stage flags checked against the stage's own command line before anything runs.

A misspelled ``--cgnet.model.masking_depht=3`` (pipeline override, stage ``args`` or sweep parameter) must fail at
once, not after the classifier has trained for an hour. :func:`check_stage_flags` parses the flags with the very
parser the stage's ``caef`` command uses (the stage's LightningCLI, or ``caef crf``'s argparse parser), stopping
right after parsing: nothing is instantiated, read or written. The Lightning parsers are built once per command.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from caef.errors import CaefError
from caef.stage_graph import LIGHTNING_STAGES, STAGES


class _Parsed(Exception):
    """Raised right after a stage command has parsed its arguments: the check stops there."""

    def __init__(self, owner: Any = None):
        super().__init__("parsed")
        self.owner = owner


def check_stage_flags(stage_name: str, config_path: str | Path | None, flags: Sequence[str]) -> None:
    """Parse ``flags`` (``--key=value`` strings) as the pipeline stage ``stage_name`` would, with its stage YAML
    ``config_path`` (None: no config); a flag the stage does not know, or a value of the wrong type, raises a
    :class:`CaefError` naming the stage, the flag and the parser's reason."""
    if stage_name not in STAGES:
        raise CaefError(f"unknown stage {stage_name!r}; stages: {', '.join(STAGES)}")
    command = STAGES[stage_name].command
    # --ckpt_path is a valid key of every Lightning command; its file is checked (loaded) when the stage runs
    flags = tuple(str(f) for f in flags if not str(f).startswith("--ckpt_path"))
    _check_cached(stage_name, command, None if config_path is None else str(config_path), flags)


@lru_cache(maxsize=256)
def _check_cached(stage_name: str, command: tuple[str, ...], config: str | None, flags: tuple[str, ...]) -> None:
    if command[0] in LIGHTNING_STAGES:
        argv = [*command[1:], *(["--config", config] if config else []), *flags]
        from caef.stage_cli import names_a_model_class

        parser = _lightning_parser(command[0], names_a_model_class(argv))
        message = _parse_errors(lambda: parser.parse_args(argv))
    elif command == ("crf",):
        message = _check_crf(flags)
    else:  # a stage without its own flags
        message = f"takes no flags, got {' '.join(flags)}" if flags else None
    if message:
        raise CaefError(f"stage {stage_name!r}: bad flag(s) {' '.join(flags) or '(none)'}: {message}")


@cache
def _lightning_parser(command: str, subclass_mode: bool = False) -> Any:
    """The LightningCLI parser of ``caef <command>``, captured once built (nothing parsed or instantiated); with
    ``subclass_mode`` the one a ``--model=<class path>`` command line gets."""
    from unittest import mock

    from lightning.pytorch.cli import LightningCLI

    from caef.stage_cli import stage_cli

    setup_parser = LightningCLI.setup_parser

    def build_then_stop(self: Any, *args: Any, **kwargs: Any) -> None:
        setup_parser(self, *args, **kwargs)
        raise _Parsed(self)

    with mock.patch.object(LightningCLI, "setup_parser", build_then_stop):
        try:
            stage_cli(command, ["--model.class_path"] if subclass_mode else [])
        except _Parsed as built:
            return built.owner.parser
    raise RuntimeError(f"caef {command}: the LightningCLI did not stop after building its parser")  # pragma: no cover


def _check_crf(flags: tuple[str, ...]) -> str | None:
    """``caef crf``'s own parser and value checks, stopped before it opens the dataset."""
    from unittest import mock

    from caef.stages import crf

    given = {f.split("=", 1)[0] for f in flags}
    placeholders = [f"{k}=." for k in ("--root", "--cam-dir", "--out-dir") if k not in given]

    def stop(*args: Any, **kwargs: Any) -> None:
        raise _Parsed()

    with mock.patch("caef.data.datamodule.open_source", stop):
        return _parse_errors(lambda: crf.main([*flags, *placeholders]))


def _parse_errors(parse: Any) -> str | None:
    """Run ``parse``; the parser's error line (argparse / jsonargparse exit with status 2), or None if it parsed."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parse()
    except _Parsed:
        return None
    except SystemExit as exc:
        text = stderr.getvalue()
        if "error:" not in text:
            return text.strip().splitlines()[-1] if text.strip() else f"exit status {exc.code}"
        lines = text[text.rindex("error:") + len("error:") :].splitlines()
        kept = [line.strip().lstrip("- ") for line in lines if line.strip() and not line.strip().startswith(_NOISE)]
        return " ".join(" ".join(kept).split())
    return None


#: jsonargparse's explanation of a Union (the model/data class or None) that only repeats the flag
_NOISE = ("Does not validate against any", "Subtypes:", "Errors:", "- Expected a <class 'NoneType'>", "Given value")
