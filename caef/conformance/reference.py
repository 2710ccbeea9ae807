"""Importing the official OC-CSE and PSA code from local clones, inside this process only.

Why: both repositories are 2018-2021 research code. They import top-level packages with clashing names (each has
``voc12``), call ``.cuda()`` unconditionally and use APIs that today's torch, NumPy, SciPy and Pillow removed. caef
never vendors them: :func:`repo_modules` puts one clone on ``sys.path`` for the duration of a ``with`` block and
removes its modules afterwards, and :class:`Patches` applies the few compatibility shims the old code needs (each
one recorded, so the command lists what it changed), restoring everything on exit.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from caef.errors import CaefError

REPOSITORIES = {
    "occse": ("OC-CSE", "https://github.com/KAIST-vilab/OC-CSE", "networks/resnet38d.py"),
    "psa": ("PSA", "https://github.com/jiwoon-ahn/psa", "network/resnet38d.py"),
}


def check_clone(kind: str, path: str | Path | None) -> Path:
    """The clone's root, or a one-line CaefError that says where to get the repository."""
    name, url, marker = REPOSITORIES[kind]
    flag = f"--{kind}"
    if not path:
        raise CaefError(f"{flag} is not set: give a local clone of {name} (git clone {url})")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise CaefError(f"{flag} {root}: no such folder; clone {name} there first (git clone {url} {root})")
    if not (root / marker).is_file():
        raise CaefError(f"{flag} {root} is not a clone of {name} (no {marker}); get it with git clone {url}")
    return root.resolve()


def clone_commit(root: Path) -> str:
    """HEAD of the clone (``unknown`` outside git)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _top_level_names(root: Path) -> set[str]:
    return {p.stem if p.suffix == ".py" else p.name for p in root.iterdir() if p.suffix == ".py" or p.is_dir()}


@contextlib.contextmanager
def repo_modules(root: Path, cwd: Path | None = None) -> Iterator[Callable[[str], Any]]:
    """``import_module`` for the clone at ``root``: its folder first on ``sys.path``, modules of the same top-level
    names set aside (the other clone's ``voc12``), and all of it undone on exit. ``cwd``: the working folder while
    inside (the reference reads some files relative to it)."""
    names = _top_level_names(root)
    stashed = {k: v for k, v in sys.modules.items() if k.split(".")[0] in names}
    for key in stashed:
        del sys.modules[key]
    old_path, old_cwd = list(sys.path), Path.cwd()
    sys.path.insert(0, str(root))
    if cwd is not None:
        os.chdir(cwd)
    try:
        yield importlib.import_module
    finally:
        if cwd is not None:
            os.chdir(old_cwd)
        sys.path[:] = old_path
        for key in [k for k in sys.modules if k.split(".")[0] in names]:
            del sys.modules[key]
        sys.modules.update(stashed)


def _on_cpu(arg: Any) -> Any:
    """A CUDA device argument of ``.to(...)`` becomes the CPU; anything else is kept."""
    if isinstance(arg, str | torch.device) and str(arg).startswith("cuda"):
        return "cpu"
    return arg


class Patches:
    """The compatibility shims, applied in ``with Patches() as p`` and listed in ``p.applied``."""

    def __init__(self) -> None:
        self.applied: list[str] = []
        self._undo: list[Callable[[], None]] = []

    def _set(self, owner: Any, name: str, value: Any, why: str) -> None:
        missing = object()
        old = getattr(owner, name, missing)
        setattr(owner, name, value)
        self._undo.append(lambda: delattr(owner, name) if old is missing else setattr(owner, name, old))
        self.applied.append(why)

    def __enter__(self) -> Patches:
        # the comparison runs on the CPU (both codes deterministic there): the reference's CUDA calls become no-ops
        self._set(torch.Tensor, "cuda", lambda self, *a, **k: self, "torch.Tensor.cuda -> no-op (CPU run)")
        self._set(torch.nn.Module, "cuda", lambda self, *a, **k: self, "torch.nn.Module.cuda -> no-op (CPU run)")
        to_tensor, to_module = torch.Tensor.to, torch.nn.Module.to

        def tensor_to(self, *args, **kwargs):
            return to_tensor(self, *map(_on_cpu, args), **kwargs)

        def module_to(self, *args, **kwargs):
            return to_module(self, *map(_on_cpu, args), **kwargs)

        self._set(torch.Tensor, "to", tensor_to, "torch.Tensor.to('cuda') -> 'cpu' (CPU run)")
        self._set(torch.nn.Module, "to", module_to, "torch.nn.Module.to('cuda') -> 'cpu' (CPU run)")
        self._set(torch.cuda, "device_count", lambda: 1, "torch.cuda.device_count -> 1 (CPU run; OC-CSE divides by it)")
        self._set(torch.cuda, "device", lambda *_: contextlib.nullcontext(), "torch.cuda.device -> no-op context")
        self._set(torch.Tensor, "pin_memory", lambda self, *a, **k: self, "torch.Tensor.pin_memory -> no-op (CPU run)")
        self._set(
            torch.nn, "DataParallel", lambda module, *a, **k: module, "torch.nn.DataParallel -> the module itself"
        )
        if not hasattr(Image, "CUBIC"):
            self._set(Image, "CUBIC", Image.BICUBIC, "PIL.Image.CUBIC = BICUBIC (removed in Pillow 10)")
        load = np.load

        def load_pickled(*args, **kwargs):
            kwargs.setdefault("allow_pickle", True)
            return load(*args, **kwargs)

        self._set(np, "load", load_pickled, "numpy.load allow_pickle=True (the reference's .npy dicts)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import scipy.misc

        if not hasattr(scipy.misc, "imsave"):

            def imsave(path, array):
                Image.fromarray(np.asarray(array)).save(path)

            self._set(scipy.misc, "imsave", imsave, "scipy.misc.imsave -> PIL save (removed in SciPy 1.2)")
        return self

    def __exit__(self, *exc: Any) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
