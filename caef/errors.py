"""Errors raised for bad user input: each message names the file or key and says how to fix it.

The ``caef`` command turns a :class:`CaefError` into exit code 2 and the one-line message ``caef: error: ...``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class CaefError(Exception):
    """Base class of every error caef raises for bad input or configuration.

    A DataLoader worker re-raises an error in the main process as ``type(exc)(traceback_text)``; the message is
    reduced to the original one plus where it came from, so it stays one line.
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (_unwrap_worker_message(args[0], type(self)),)
        super().__init__(*args)


class DataError(CaefError):
    """A dataset tree, list entry, image, mask or annotation is missing or malformed."""


class DataWarning(UserWarning):
    """A bad dataset entry was skipped (``skip_bad``): the warning names it and where the list of skipped ids is."""


def _unwrap_worker_message(message: str, cls: type) -> str:
    """``"Caught DataError in DataLoader worker process 0.\\nOriginal Traceback ...\\ncaef.errors.DataError: msg"``
    (what ``torch.utils.data`` re-raises) -> ``"msg (raised in DataLoader worker process 0)"``; else unchanged."""
    head, _, rest = message.partition("\n")
    if not (head.startswith(f"Caught {cls.__name__} ") and rest.startswith("Original Traceback")):
        return message
    where = head.removeprefix(f"Caught {cls.__name__} ").rstrip(".")
    original = None
    for name in (f"{cls.__module__}.{cls.__qualname__}", cls.__qualname__):
        marker = f"\n{name}: "
        index = rest.rfind(marker)
        if index >= 0 and (original is None or index > original[0]):
            original = (index, rest[index + len(marker) :].strip())
    if original is None:
        return message
    return f"{original[1]} (raised {where})"


def check_writable_dir(path: str | os.PathLike, what: str, create: bool = True) -> Path:
    """Create the folder ``path`` if needed and check that a file can be written in it, before long work starts.

    Raises a :class:`CaefError` naming ``what`` (e.g. ``--out-dir``) and the path: a path under a regular file,
    a missing permission or a read-only file system. Returns ``path`` as a :class:`Path`. With ``create=False`` a
    missing folder is not created: its nearest existing ancestor must be a writable folder instead.
    """
    path = Path(path)
    if not create and not path.exists():
        ancestor = next(p for p in (*path.parents, Path(".")) if p.exists())
        if ancestor.is_dir() and os.access(ancestor, os.W_OK | os.X_OK):
            return path
        reason = f"{ancestor} is a file, not a folder" if not ancestor.is_dir() else f"{ancestor} is not writable"
        raise CaefError(
            f"{what} {path} is not a writable folder ({reason}); choose another folder or fix its permissions"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".caef-write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file, not a folder" if blocker is not None else (exc.strerror or str(exc))
        raise CaefError(
            f"{what} {path} is not a writable folder ({reason}); choose another folder or fix its permissions"
        ) from exc
    return path
