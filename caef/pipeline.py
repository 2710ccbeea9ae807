"""``caef pipeline CONFIG``: a whole experiment, stage by stage, cached and resumable.

    classifier -> cgnet -> cams -> crf -> affinity -> pseudo -> deeplab (+ fully_supervised, the upper bound)

Each stage is one ``caef`` command in its own process (clean W&B runs, no state shared between stages) under
``<runs_root>/<name>/``. ``manifest.json`` there records, per stage, its argv, a fingerprint of its config file,
argv and upstream fingerprints, its status and time. On a rerun a ``done`` stage with an unchanged fingerprint
whose outputs exist is skipped; a ``running`` stage (the process died) resumes -- training from its
``last.ckpt``, offline stages from the files not yet written (writers skip existing, atomically written files);
a stage whose fingerprint changed starts clean (its old outputs are removed). ``--from``/``--until`` select a
slice; a stage outside it must already be done for the stages after it to run. The stages themselves are declared
in ``caef/stage_graph.py``; a stage that another run under the same ``runs_root`` finished with the same fingerprint
is copied from it (``caef/stage_cache.py``). The command line is ``caef/pipeline_cli.py``.

The stages write their metrics into ``summary.json`` (CAM scores, pseudo-label scores, DeepLab val mIoU); the
pipeline adds the seed, backbones, masking depth, per-stage times and a config hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from caef.errors import CaefError
from caef.io import read_yaml_mapping, update_json, write_json
from caef.stage_cache import StageCache
from caef.stage_graph import LIGHTNING_STAGES, ORDER, STAGES, StageSpec

# the stage graph is re-exported: ``from caef.pipeline import STAGES, ORDER, ...`` keeps working
__all__ = ["LIGHTNING_STAGES", "ORDER", "STAGES", "Pipeline", "PipelineConfig", "StageSpec"]


@dataclass
class PipelineConfig:
    """The experiment file (``experiments/*.yaml``); every field can be overridden on the command line."""

    name: str
    stages: dict[str, dict[str, Any]]  # stage -> {config: YAML of the stage's command, args: [flags]}
    runs_root: str = "runs"
    seed: int = 0
    dataset: str = "synthetic"
    data_root: str | None = None  # checked before anything runs
    data_help: str = ""  # what to print when data_root is missing
    all: list[str] = field(default_factory=list)  # flags given to every Lightning stage
    tags: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> PipelineConfig:
        path = Path(path)
        raw = read_yaml_mapping(path, "pipeline config", "see experiments/*.yaml")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise CaefError(f"pipeline config {path}: unknown key(s) {unknown}; known keys: {sorted(known)}")
        for key in ("name", "stages"):
            if key not in raw:
                raise CaefError(f"pipeline config {path}: missing key {key!r}")
        config = cls(**raw)
        for stage, spec in config.stages.items():
            if stage not in STAGES:
                raise CaefError(f"pipeline config {path}: unknown stage {stage!r}; stages: {', '.join(ORDER)}")
            extra = sorted(set(spec or {}) - {"config", "args"})
            if extra:
                raise CaefError(f"pipeline config {path}: stage {stage!r} has unknown key(s) {extra} (config, args)")
            config.stages[stage] = {"config": (spec or {}).get("config"), "args": list((spec or {}).get("args") or [])}
            if STAGES[stage].command[0] in LIGHTNING_STAGES and not config.stages[stage]["config"]:
                raise CaefError(f"pipeline config {path}: stage {stage!r} needs a `config:` (a stage YAML)")
        return config


class Pipeline:
    """Runs the stages of ``config`` in order under ``<runs_root>/<name>``; see the module docstring."""

    def __init__(
        self, config: PipelineConfig, overrides: dict[str, list[str]] | None = None, python: str | None = None
    ):
        self.config = config
        self.overrides = overrides or {}
        self.python = python or sys.executable
        self.run_dir = Path(config.runs_root) / config.name
        self.manifest_path = self.run_dir / "manifest.json"
        self.cache = StageCache(config.runs_root)

    # -- what each stage runs --------------------------------------------------------------------------------------
    def argv(self, stage: str) -> list[str]:
        spec, settings = STAGES[stage], self.config.stages[stage]
        run = self.run_dir
        args = list(spec.command)
        if settings["config"]:
            args += ["--config", settings["config"]]
        if spec.command[0] in LIGHTNING_STAGES:
            args += [f"--run_dir={run}", f"--seed_everything={self.config.seed}", *self.config.all]
            args += [f"--stage_dir={stage}"] if spec.trains and stage != spec.command[0] else []
        if spec.command[0] in LIGHTNING_STAGES and self.config.data_root:
            args.append(f"--data.root={self.config.data_root}")
        if stage == "cams":
            args.append(f"--ckpt_path={run / 'cgnet' / 'last.ckpt'}")
        elif stage == "crf":
            args += [f"--dataset={self.config.dataset}", f"--root={self.config.data_root}"]
            args += [f"--cam-dir={run / 'cams' / 'cgnet'}", f"--out-dir={run / 'seeds'}"]
        elif stage == "affinity":
            args.append(f"--model.init_checkpoint={run / 'cgnet' / 'last.ckpt'}")
        elif stage == "pseudo":
            args.append(f"--ckpt_path={run / 'affinity' / 'last.ckpt'}")
        elif stage == "deeplab":
            args.append(f"--data.label_dir={run / 'pseudo'}")
        return args + settings["args"] + self.overrides.get(stage, [])

    def _stage_digest(self, stage: str) -> Any:  # a hashlib object
        """The stage's own settings: its argv with the run folder abstracted (the same in every run) and the bytes
        of its config file."""
        settings = self.config.stages[stage]
        portable = [arg.replace(str(self.run_dir), "{run}") for arg in self.argv(stage)]
        digest = hashlib.sha256(json.dumps(portable).encode())
        if settings["config"]:
            digest.update(Path(settings["config"]).read_bytes())
        return digest

    def fingerprint(self, stage: str, manifest: dict) -> str:
        """The stage's settings plus its upstream stages' fingerprints: equal fingerprints, equal outputs."""
        digest = self._stage_digest(stage)
        for need in STAGES[stage].needs:
            digest.update(manifest["stages"].get(need, {}).get("fingerprint", "missing").encode())
        return digest.hexdigest()[:16]

    def config_hash(self) -> str:
        """One hash of every stage's settings: runs with equal hashes ran the same experiment."""
        joined = "".join(self._stage_digest(stage).hexdigest() for stage in self.stages())
        return hashlib.sha256(joined.encode()).hexdigest()[:16]

    def stages(self) -> list[str]:
        return [s for s in ORDER if s in self.config.stages]

    # -- running ---------------------------------------------------------------------------------------------------
    def run(self, start: str | None = None, until: str | None = None, dry_run: bool = False) -> dict:
        stages = self.stages()
        for bound in (start, until):
            if bound is not None and bound not in stages:
                raise CaefError(f"--from/--until {bound!r} is not a stage of this pipeline ({', '.join(stages)})")
        first = stages.index(start) if start else 0
        last = stages.index(until) if until else len(stages) - 1
        self._check_data()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        manifest = self._load_manifest()
        for stage in stages[first : last + 1]:
            self._run_stage(stage, manifest, dry_run)
        return {} if dry_run else self._finish(manifest)

    def _run_stage(self, stage: str, manifest: dict, dry_run: bool) -> None:
        spec = STAGES[stage]
        for need in () if dry_run else spec.needs:
            if need in self.config.stages and manifest["stages"].get(need, {}).get("status") != "done":
                raise CaefError(f"stage {stage!r} needs {need!r}, which has not finished; run it first (--from {need})")
        fingerprint = self.fingerprint(stage, manifest)
        entry = manifest["stages"].get(stage, {})
        same = entry.get("fingerprint") == fingerprint
        if same and entry.get("status") == "done" and spec.outputs_exist(self.run_dir):
            print(f"[caef pipeline] {stage}: done, unchanged -- skipped", flush=True)
            return
        if not (same and entry.get("status") == "running") and self._reuse_cached(stage, fingerprint, manifest):
            return
        argv = self.argv(stage)
        resume = same and entry.get("status") == "running"
        if resume and spec.checkpoint and (self.run_dir / spec.checkpoint).is_file():
            argv.append(f"--ckpt_path={self.run_dir / spec.checkpoint}")
        elif not resume:
            spec.clear_outputs(self.run_dir)
        cmd = [self.python, "-m", "caef.cli", *argv]
        print(f"\n[caef pipeline] {stage} ({spec.help}){' -- resuming' if resume else ''}\n  caef {' '.join(argv)}",
              flush=True)  # fmt: skip
        if dry_run:
            return
        seconds = entry.get("seconds", 0.0) if resume else 0.0
        manifest["stages"][stage] = {
            "status": "running", "fingerprint": fingerprint, "argv": argv,
            "config": self.config.stages[stage]["config"], "needs": list(spec.needs), "outputs": list(spec.outputs),
            "seconds": seconds, "started": _now(),
        }  # fmt: skip
        self._save_manifest(manifest)
        before = self._summary()
        start = time.perf_counter()
        env = os.environ | {"CAEF_PIPELINE": json.dumps(self._wandb_context())}
        result = subprocess.run(cmd, env=env)
        manifest["stages"][stage]["seconds"] = round(seconds + time.perf_counter() - start, 1)
        if result.returncode != 0:
            self._save_manifest(manifest)
            raise CaefError(
                f"stage {stage!r} failed (exit code {result.returncode}); fix the cause and rerun the same command: "
                f"finished stages are kept and {stage!r} resumes"
            )
        if not spec.outputs_exist(self.run_dir):
            raise CaefError(f"stage {stage!r} finished but left no {', '.join(spec.outputs)} under {self.run_dir}")
        after = self._summary()
        delta = {k: v for k, v in after.items() if before.get(k) != v}
        manifest["stages"][stage].update(status="done", finished=_now(), summary=delta)
        self._save_manifest(manifest)
        self.cache.record(fingerprint, self.config.name)

    def _reuse_cached(self, stage: str, fingerprint: str, manifest: dict) -> bool:
        """A stage with the same fingerprint finished in another run (a sweep's shared classifier): copy it."""
        entry = self.cache.copy(stage, fingerprint, self.config.name)
        if entry is None:
            return False
        manifest["stages"][stage] = entry
        self._save_manifest(manifest)
        print(f"[caef pipeline] {stage}: same inputs and config as in {entry['cached_from']} -- copied", flush=True)
        return True

    def _summary(self) -> dict:
        path = self.run_dir / "summary.json"
        try:
            return json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError:
            return {}

    def _check_data(self) -> None:
        root = self.config.data_root
        if root and self.config.dataset != "synthetic" and not Path(root).exists():
            raise CaefError(f"dataset root {root} not found.\n{self.config.data_help}".rstrip())

    def _wandb_context(self) -> dict:
        """Pipeline-level facts every stage's W&B run carries (group, tags, config) for comparisons in the UI."""
        facts = self._facts()
        tags = [f"dataset:{self.config.dataset}", f"seed:{self.config.seed}", *self.config.tags]
        if facts.get("masking_depth") is not None:
            tags.append(f"masking_depth:{facts['masking_depth']}")
        if facts.get("erasing") is False:
            tags.append("no_erasing_control")
        tags += [f"{k}:{facts[k]}" for k in ("classifier_backbone", "cgnet_backbone") if facts.get(k)]
        return {"group": self.config.name, "tags": tags, "config": facts}

    def _facts(self) -> dict:
        """Seed, dataset, backbones, masking depth and erasing as the stage flags (or else the stage configs) set
        them, so the summary states what actually ran."""
        facts: dict[str, Any] = {"name": self.config.name, "seed": self.config.seed, "dataset": self.config.dataset}
        for stage, key in (("classifier", "classifier_backbone"), ("cgnet", "cgnet_backbone")):
            if stage in self.config.stages:
                facts[key] = self._model_setting(stage, "backbone")
        if "cgnet" in self.config.stages:
            depth = self._model_setting("cgnet", "masking_depth")
            facts["masking_depth"] = int(depth) if depth is not None else 0
            erasing = self._model_setting("cgnet", "erasing")
            facts["erasing"] = str(erasing).lower() != "false"  # false: the no-erasing control
        return facts

    def _model_setting(self, stage: str, key: str) -> Any:
        """``model.<key>`` of a stage: its last ``--model.<key>=`` flag, else its config file's value (or None)."""
        value = _flag(self.argv(stage), f"model.{key}")
        return value if value is not None else _yaml_value(self.config.stages[stage].get("config"), ("model", key))

    def _finish(self, manifest: dict) -> dict:
        times = {s: manifest["stages"][s].get("seconds") for s in ORDER if s in manifest["stages"]}
        times = {s: t for s, t in times.items() if manifest["stages"][s].get("status") == "done"}
        summary = update_json(
            self.run_dir / "summary.json",
            self._facts()
            | {
                "config_hash": self.config_hash(),
                "overrides": self.overrides,
                "stage_seconds": times,
                "total_seconds": round(sum(t for t in times.values() if t), 1),
                "versions": _versions(),
            },
        )
        self._report()
        return summary

    def _report(self) -> None:
        """``report.md`` with plots; a failure here is reported, never fatal (the results are already saved)."""
        try:
            from caef.data.datamodule import open_source
            from caef.report import write_report

            write_report(self.run_dir, open_source(self.config.dataset, self.config.data_root))
        except Exception as exc:  # noqa: BLE001 -- the report is a convenience on top of saved results
            print(f"[caef pipeline] report not written: {type(exc).__name__}: {exc}", file=sys.stderr)

    def _load_manifest(self) -> dict:
        if self.manifest_path.is_file():
            try:
                return json.loads(self.manifest_path.read_text())
            except json.JSONDecodeError as exc:
                raise CaefError(f"{self.manifest_path} is corrupt ({exc}); delete it to rerun every stage") from exc
        return {"name": self.config.name, "stages": {}}

    def _save_manifest(self, manifest: dict) -> None:
        write_json(self.manifest_path, manifest)


def _flag(argv: Sequence[str], key: str) -> str | None:
    value = None
    for arg in argv:
        if arg.startswith(f"--{key}="):
            value = arg.split("=", 1)[1]
    return value


def _yaml_value(path: str | None, keys: Sequence[str]) -> Any:
    if not path or not Path(path).is_file():
        return None
    node: Any = yaml.safe_load(Path(path).read_text()) or {}
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for package in ("caef", "torch", "torchvision", "lightning", "torchmetrics", "wandb", "albumentations"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
