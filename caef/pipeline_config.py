"""The experiment file of ``caef pipeline`` (``experiments/*.yaml``): a typed schema checked before anything runs.

Every key and type is checked (a list where a name belongs, ``args`` given as one string, a stage given as a string,
``seed: abc`` are one-line errors naming the file and the key), and so is every stage config: paths resolve
relative to the experiment file (then, for older experiment files, to the working directory) and must be YAML
mappings. An experiment path that does not exist is looked up among the experiments shipped with caef
(``caef.experiments`` in an installed package, ``experiments/`` of a source checkout).
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from caef.errors import CaefError
from caef.io import read_yaml_mapping
from caef.precision_policy import check_precision
from caef.stage_graph import LIGHTNING_STAGES, ORDER, STAGES

DATASETS = ("synthetic", "voc", "coco")


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
    parallel_stages: int = 1  # independent consecutive stages run side by side, at most this many (stage_schedule)
    precision: str | None = None  # the network stages' trainer.precision; auto: by the CPU (precision_policy)
    tags: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> PipelineConfig:
        path = find_experiment(path)
        raw = read_yaml_mapping(path, "pipeline config", "see experiments/*.yaml")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise CaefError(f"pipeline config {path}: unknown key(s) {unknown}; known keys: {sorted(known)}")
        for key in ("name", "stages"):
            if key not in raw:
                raise CaefError(f"pipeline config {path}: missing key {key!r}")
        hints = typing.get_type_hints(cls)
        for key, value in raw.items():
            if key != "stages" and not _is_type(value, hints[key]):
                raise CaefError(
                    f"pipeline config {path}: key {key!r} must be {_describe(hints[key])}, got {value!r} "
                    f"({type(value).__name__}); fix it in the file"
                )
        check_run_name(raw["name"], f"pipeline config {path}: key 'name'")
        check_parallel_stages(raw.get("parallel_stages", 1), f"pipeline config {path}: key 'parallel_stages'")
        check_precision(raw.get("precision"), f"pipeline config {path}: key 'precision'")
        if raw.get("dataset", "synthetic") not in DATASETS:
            raise CaefError(
                f"pipeline config {path}: key 'dataset' must be one of {', '.join(DATASETS)}, got {raw['dataset']!r}"
            )
        raw["stages"] = _stages(raw["stages"], path)
        return cls(**raw)


def _stages(stages: Any, path: Path) -> dict[str, dict[str, Any]]:
    """``stage -> {config, args}`` with every stage config resolved and checked."""
    if not isinstance(stages, dict):
        raise CaefError(
            f"pipeline config {path}: key 'stages' must map stage names to {{config: ..., args: [...]}}, got "
            f"{type(stages).__name__}; e.g. `stages: {{classifier: {{config: classifier/demo.yaml}}}}`"
        )
    out = {}
    for stage, spec in stages.items():
        where = f"pipeline config {path}: stage {stage!r}"
        if stage not in STAGES:
            raise CaefError(f"pipeline config {path}: unknown stage {stage!r}; stages: {', '.join(ORDER)}")
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            raise CaefError(
                f"{where} must be a mapping {{config: <stage YAML>, args: [<flags>]}}, got {spec!r} "
                f"({type(spec).__name__}); e.g. `{stage}: {{config: {stage}/demo.yaml}}`"
            )
        extra = sorted(set(spec) - {"config", "args"})
        if extra:
            raise CaefError(f"{where} has unknown key(s) {extra} (config, args)")
        config, args = spec.get("config"), spec.get("args") or []
        if config is not None and not isinstance(config, str):
            raise CaefError(f"{where}: `config` must be a path (a string), got {config!r}")
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise CaefError(
                f"{where}: `args` must be a list of flags, e.g. [--seed=1], got {args!r} ({type(args).__name__})"
            )
        if STAGES[stage].command[0] in LIGHTNING_STAGES and not config:
            raise CaefError(f"{where} needs a `config:` (a stage YAML)")
        out[stage] = {"config": resolve_stage_config(config, path, where) if config else None, "args": list(args)}
    return out


def resolve_stage_config(config: str, experiment: Path, where: str) -> str:
    """The stage config ``config`` relative to the experiment file (or, for older experiment files that name it from
    the folder above, ``experiments/cgnet/demo.yaml``, to that folder, then to the working directory), checked to
    be a YAML mapping; an absolute path is taken as it is."""
    given, folder = Path(config), experiment.resolve().parent
    candidates = [given] if given.is_absolute() else [folder / given, Path.cwd() / given]
    if given.parts[:1] == (folder.name,):  # written from the folder above, e.g. experiments/cgnet/demo.yaml
        candidates.insert(1, folder.parent / given)
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        tried = " or ".join(str(c) for c in candidates)
        raise CaefError(
            f"{where}: stage config {config} not found (looked for {tried}); give a path relative to the experiment "
            "file"
        )
    read_yaml_mapping(found, "stage config", f"named by {where}")
    return str(found.resolve())


def find_experiment(path: str | Path) -> Path:
    """``path`` if it exists, else the experiment of that name shipped with caef (``experiments/demo.yaml`` and
    ``demo.yaml`` both name ``caef.experiments/demo.yaml``)."""
    path = Path(path)
    if path.exists():
        return path
    parts = path.parts[1:] if path.parts[:1] == ("experiments",) else path.parts
    for folder in shipped_experiment_folders():
        candidate = folder.joinpath(*parts)
        if parts and candidate.is_file():
            return candidate
    shipped = sorted(p.name for f in shipped_experiment_folders() for p in f.glob("*.yaml"))
    raise CaefError(
        f"pipeline config not found: {path} (not in the working directory {Path.cwd()}, nor among the experiments "
        f"shipped with caef: {', '.join(shipped) or 'none'}); give the path of an experiment YAML"
    )


def shipped_experiment_folders() -> list[Path]:
    """Where the experiments shipped with caef are: the ``caef.experiments`` package data of an installed caef,
    and ``experiments/`` beside the package in a source checkout."""
    import caef

    folders = []
    try:
        from importlib.resources import files

        # a namespace package's files() is a MultiplexedPath: its entries are real paths of its folder(s)
        folders += sorted({Path(str(entry)).parent for entry in files("caef.experiments").iterdir()})
    except (ModuleNotFoundError, TypeError, ValueError, OSError):
        pass
    checkout = Path(caef.__file__).resolve().parents[1] / "experiments"
    if checkout.is_dir() and checkout not in folders:
        folders.append(checkout)
    return folders


def check_run_name(name: Any, what: str = "--name") -> str:
    """A run name is a plain folder name: no path separator, not ``.``/``..``, not empty or hidden."""
    if not isinstance(name, str) or not name.strip():
        raise CaefError(f"{what}: a run name must be a non-empty plain name, got {name!r}; use e.g. --name=demo_s1")
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith(".") or "\0" in name:
        raise CaefError(
            f"{what}: run name {name!r} must be a plain folder name (no '/', not '.' or '..', not starting with '.'): "
            "runs live in <runs_root>/<name>; use e.g. --name=demo_s1 (and --runs_root to choose the folder)"
        )
    return name


def check_parallel_stages(value: Any, what: str = "--parallel_stages") -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CaefError(f"{what} must be a whole number >= 1 (1: one stage at a time), got {value!r}")
    return value


def _is_type(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is_type(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_is_type(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}s"
    return {str: "a string", int: "an integer", type(None): "null", dict: "a mapping"}.get(hint, str(hint))
