"""Atomic file writes: a result file either exists complete or not at all."""

from __future__ import annotations

import hashlib
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
    """Yield a temporary path next to ``path`` (same file system); once the block succeeds the file is flushed to
    disk, given the permissions of a newly created file (``0o666`` less the umask: colleagues can read results
    where the umask lets them; ``mkstemp`` alone gives ``0600``) and renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _umask() -> int:
    """The process umask: from /proc where it is listed (no change to process state, safe under threads), else
    read by setting it and restoring it at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make the rename durable; a file system that cannot sync a folder (some network mounts) is left as it is."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def update_json(path: str | os.PathLike, updates: dict[str, Any]) -> dict[str, Any]:
    """Merge ``updates`` into the JSON object at ``path`` (created if absent) and write it atomically, holding
    ``path``'s lock for the read-modify-write."""
    from caef.run_lock import file_lock

    path = Path(path)
    with file_lock(path):  # stages and pipelines merging into one summary at once lose no entry
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


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """The sha256 of a file's bytes ("missing" if it is not there), kept per (path, size, mtime) for this process
    (weight files and dataset lists enter fingerprints this way)."""
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]
