"""Which caef code computes a result: its version, a digest of its package sources and the git commit.

A stage's fingerprint includes :func:`code_identity`'s ``version`` and ``sources`` so that results of older code
are never skipped over or copied from another run as if they were current: after a fix, the stages rerun (and the
pipeline says it is because the code changed). The git commit is recorded for the reader but not part of the
fingerprint: a commit that changes no source file computes the same results.
"""

from __future__ import annotations

import hashlib
import subprocess
from functools import cache
from pathlib import Path

import caef

#: the files whose bytes decide what caef computes (the package's own code; configs are hashed per stage)
SOURCE_SUFFIXES = (".py",)


@cache
def code_identity() -> dict[str, str | None]:
    """``{"version", "sources", "commit"}``: caef's version, a sha256 (16 hex) over every source file of the
    package (relative path and bytes, in path order) and the git commit of the checkout (None when caef is not
    run from a git checkout). Cached: the code does not change while a process runs."""
    package = Path(caef.__file__).resolve().parent
    return {"version": caef.__version__, "sources": source_digest(package), "commit": _git_commit(package.parent)}


def source_digest(package: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.suffix in SOURCE_SUFFIXES and p.is_file()):
        if "__pycache__" in path.parts:
            continue
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def code_key() -> str:
    """The part of a stage fingerprint that names the code: version and source digest."""
    identity = code_identity()
    return f"caef {identity['version']} sources {identity['sources']}"


def _git_commit(folder: Path) -> str | None:
    if not (folder / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
