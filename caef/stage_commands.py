"""What each stage of ``caef pipeline`` runs and what identifies its result: its command line, the stages it reads,
its fingerprints. The half of :class:`~caef.pipeline.Pipeline` that reads and never writes (``--dry_run``, sweeps
and the stage cache use it too).

A stage's settings digest covers its argv (run folder and config path abstracted), its config file's bytes, the
bytes of every weight file it loads from outside the run folder (``model.pretrained``, ``model.init_checkpoint``,
``model.ordinary_classifier``) and the identity of the dataset tree (its split lists, class names and generator
manifest): a pretrained trunk trained again, ImageNet weights replaced, or a dataset regenerated or re-split under
the same path changes the fingerprint and so reruns the stage instead of keeping results computed from the old one.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from caef import code_fingerprint
from caef.data.identity import dataset_identity
from caef.errors import CaefError
from caef.io import file_digest
from caef.pipeline_config import PipelineConfig
from caef.precision_policy import resolve_precision
from caef.run_layout import layout_path
from caef.stage_graph import AUTOCAST_COMMANDS, LIGHTNING_STAGES, ORDER, STAGES
from caef.stage_outputs import stage_setting

_RUN_REF = re.compile(r"\{run\}/([A-Za-z_]+)/")
#: settings that name a weight file a stage loads: its bytes are part of the stage's fingerprint
WEIGHT_KEYS = ("model.pretrained", "model.init_checkpoint", "model.ordinary_classifier")


class StageCommands:
    """The command line and identity of each stage of ``config`` run under ``<runs_root>/<name>``."""

    def __init__(self, config: PipelineConfig, overrides: dict[str, list[str]] | None = None):
        self.config = config
        self.overrides = overrides or {}
        self.run_dir = Path(config.runs_root) / config.name
        #: ``precision`` resolved on this machine (``auto`` -> bf16-mixed or 32-true); None: the stage configs decide
        self.precision = resolve_precision(config.precision)

    def argv(self, stage: str) -> list[str]:
        spec, settings = STAGES[stage], self.config.stages[stage]
        run = self.run_dir
        args = list(spec.command)
        if settings["config"]:
            args += ["--config", settings["config"]]
        if spec.command[0] in LIGHTNING_STAGES:
            args += [f"--run_dir={run}", f"--seed_everything={self.config.seed}", *self.config.all]
            args += [f"--stage_dir={stage}"] if spec.trains and stage != spec.command[0] else []
        if spec.command[0] in AUTOCAST_COMMANDS and self.precision:
            args.append(f"--trainer.precision={self.precision}")
        if spec.command[0] in LIGHTNING_STAGES and self.config.data_root:
            args.append(f"--data.root={self.config.data_root}")
        if spec.command == ("crf",):  # an offline command: the dataset comes as its own flags
            args += [f"--dataset={self.config.dataset}", f"--root={self.config.data_root}"]
        args += [f"{flag}={run / layout_path(template, owner)}" for flag, template, owner in spec.inputs]
        return args + self.user_flags(stage)

    def user_flags(self, stage: str) -> list[str]:
        """The stage's ``args`` and ``--<stage>.<key>`` overrides, ``{run}`` replaced by the run folder."""
        flags = self.config.stages[stage]["args"] + self.overrides.get(stage, [])
        return [flag.replace("{run}", str(self.run_dir)) for flag in flags]

    def needs(self, stage: str) -> tuple[str, ...]:
        """The stages whose results ``stage`` reads: its spec's, plus those its flags name as ``{run}/<stage>/``."""
        flags = self.config.stages[stage]["args"] + self.overrides.get(stage, [])
        named = [m for flag in flags for m in _RUN_REF.findall(flag) if m in STAGES and m != stage]
        for need in named:
            if need in self.config.stages and ORDER.index(need) > ORDER.index(stage):
                raise CaefError(f"stage {stage!r} reads {{run}}/{need}/, but {need!r} runs after it; reorder or drop")
        return tuple(dict.fromkeys([*STAGES[stage].needs, *named]))

    def _stage_digest(self, stage: str) -> Any:  # a hashlib object
        """The stage's own settings: its argv with the run folder and config path abstracted (the same in every run
        and checkout), the bytes of its config file and of the weight files it loads from outside the run."""
        settings, argv = self.config.stages[stage], self.argv(stage)
        portable = [arg.replace(str(self.run_dir), "{run}") for arg in argv]
        if settings["config"]:
            portable = [arg.replace(settings["config"], "{config}") for arg in portable]
        digest = hashlib.sha256(json.dumps(portable).encode())
        if settings["config"]:
            digest.update(Path(settings["config"]).read_bytes())
        for path in self.weight_files(stage, argv):
            digest.update(f"{path.name}:{file_digest(path)}".encode())
        if self.data_identity is not None:
            digest.update(f"data:{self.data_identity}".encode())
        return digest

    @cached_property
    def data_identity(self) -> str | None:
        """The dataset tree's identifying files (split lists, class names, generator manifest; caef.data.identity),
        once per pipeline: a tree replaced under the same path changes every stage's fingerprint."""
        return dataset_identity(self.config.dataset, self.config.data_root)

    def fingerprints(self, stage: str, manifest: dict) -> tuple[str, str]:
        """(settings, full): the stage's settings plus its upstream stages' fingerprints; the full one adds caef's
        code (version and source digest). Equal full fingerprints and inputs, equal outputs."""
        settings = self._stage_digest(stage)
        full = settings.copy()
        for need in self.needs(stage):
            entry = manifest["stages"].get(need, {})
            settings.update(entry.get("settings", "missing").encode())
            full.update(entry.get("fingerprint", "missing").encode())
        full.update(code_fingerprint.code_key().encode())
        return settings.hexdigest()[:16], full.hexdigest()[:16]

    def fingerprint(self, stage: str, manifest: dict) -> str:
        return self.fingerprints(stage, manifest)[1]

    def config_hash(self) -> str:
        """One hash of every stage's settings: runs with equal hashes ran the same experiment."""
        joined = "".join(self._stage_digest(stage).hexdigest() for stage in self.stages())
        return hashlib.sha256(joined.encode()).hexdigest()[:16]

    def stages(self) -> list[str]:
        return [s for s in ORDER if s in self.config.stages]

    def check_flags(self, stages: Sequence[str]) -> None:
        """Every stage's ``args`` and overrides parsed by the stage's own command line, before anything runs."""
        from caef.stage_flags import check_stage_flags

        for stage in stages:
            flags = self.user_flags(stage)
            if STAGES[stage].command[0] in LIGHTNING_STAGES:
                flags = [*self.config.all, *flags]
            if STAGES[stage].command[0] in AUTOCAST_COMMANDS and self.precision:
                flags = [f"--trainer.precision={self.precision}", *flags]
            check_stage_flags(stage, self.config.stages[stage]["config"], flags)

    def _setting(self, stage: str, key: str) -> Any:
        """``key`` (dotted) of a stage: its last ``--<key>=`` flag, else its config file's value (or None)."""
        return stage_setting(self.argv(stage), self.config.stages[stage].get("config"), key)

    def weight_files(self, stage: str, argv: Sequence[str] | None = None) -> list[Path]:
        """The weight files ``stage`` loads from outside the run folder (those inside are upstream results);
        ``argv``: the stage's, if the caller has it already."""
        argv, config, files = argv or self.argv(stage), self.config.stages[stage].get("config"), []
        for key in WEIGHT_KEYS:
            value = stage_setting(argv, config, key)
            if isinstance(value, str) and value and value.lower() not in ("null", "none"):
                path = Path(value)
                if not path.resolve().is_relative_to(self.run_dir.resolve()):
                    files.append(path)
        return files
