"""Atomic file writes: a result file either exists complete or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def update_json(path: str | os.PathLike, updates: dict[str, Any]) -> dict[str, Any]:
    """Merge ``updates`` into the JSON object at ``path`` (created if absent) and write it atomically."""
    path = Path(path)
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(updates)
    write_json(path, data)
    return data


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write a compressed ``.npz`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_yaml_mapping(path: str | os.PathLike, what: str, hint: str) -> dict[str, Any]:
    """A YAML file holding a mapping; a missing file, bad YAML or another top-level type is a CaefError naming
    ``what`` (e.g. "sweep file") and the path, with ``hint`` saying where such files live."""
    import yaml

    from caef.errors import CaefError

    path = Path(path)
    if not path.is_file():
        raise CaefError(f"{what} not found: {path} ({hint})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CaefError(f"{what} {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise CaefError(f"{what} {path} must hold a mapping of keys, found {type(data).__name__}")
    return data
