"""The cross-run stage cache: ``<runs_root>/stage_cache.json`` maps a stage fingerprint to the run that finished it.

Equal fingerprints (settings, upstream fingerprints and caef's code) and equal inputs (the same upstream results)
mean equal outputs, so a stage another run already finished (a sweep's shared classifier) is copied instead of
rerun. Only a stage whose outputs verify in the other run is copied, and the copy is verified again. Updates of the
cache file hold its lock (``caef sweep --jobs N`` records from several pipelines at once). The cache only finds and
copies; the calling pipeline owns its manifest and records the entry this returns.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from caef.io import update_json
from caef.run_layout import SUMMARY
from caef.stage_graph import STAGES

#: lists what is missing or unreadable among a stage's products under a run folder (empty: verified)
Verifier = Callable[[Path], list]


class StageCache:
    """``<runs_root>/stage_cache.json``: fingerprint -> name of the run (``<runs_root>/<name>``) that finished it."""

    def __init__(self, runs_root: str | Path):
        self.runs_root = Path(runs_root)
        self.path = self.runs_root / "stage_cache.json"

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def lookup(self, fingerprint: str) -> str | None:
        """The run that finished a stage with this fingerprint, if any."""
        return self._load().get(fingerprint)

    def record(self, fingerprint: str, run_name: str) -> None:
        update_json(self.path, {fingerprint: run_name})  # a locked read-modify-write

    def copy(
        self, stage: str, fingerprint: str, run_name: str, inputs: dict | None = None, verify: Verifier | None = None
    ) -> dict | None:
        """Copy a finished stage's outputs (and its summary entries) from another run with the same fingerprint and
        ``inputs`` into ``<runs_root>/<run_name>``, if ``verify`` finds them complete there; returns the manifest
        entry to store, or None when no other run has them."""
        other_name = self.lookup(fingerprint)
        if not other_name or other_name == run_name:
            return None
        other, run_dir = self.runs_root / other_name, self.runs_root / run_name
        try:
            entry = json.loads((other / "manifest.json").read_text())["stages"][stage]
        except (OSError, KeyError, TypeError, json.JSONDecodeError):
            return None
        spec = STAGES[stage]
        if entry.get("fingerprint") != fingerprint or entry.get("status") != "done":
            return None
        if inputs is not None and entry.get("inputs", {}) != inputs:
            return None  # built on other upstream results (another training of the same settings)
        if not spec.outputs_exist(other) or (verify is not None and verify(other)):
            return None
        spec.clear_outputs(run_dir)
        for top in sorted({out.split("/")[0] for out in spec.outputs}):
            src, dst = other / top, run_dir / top
            if src.is_dir():
                shutil.copytree(src, dst, dirs_exist_ok=True)
            else:
                shutil.copy2(src, dst)
        if verify is not None and verify(run_dir):
            spec.clear_outputs(run_dir)
            return None
        if entry.get("summary"):
            update_json(run_dir / SUMMARY, entry["summary"])
        return entry | {"cached_from": str(other), "seconds": 0.0}
