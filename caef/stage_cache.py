"""The cross-run stage cache: ``<runs_root>/stage_cache.json`` maps a stage fingerprint to the run that finished it.

Equal fingerprints mean equal outputs, so a stage another run already finished (a sweep's shared classifier) is
copied instead of rerun. The cache only finds and copies; the calling pipeline owns its manifest and records the
entry this returns.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from caef.io import update_json, write_json
from caef.stage_graph import STAGES


class StageCache:
    """``<runs_root>/stage_cache.json``: fingerprint -> name of the run (``<runs_root>/<name>``) that finished it."""

    def __init__(self, runs_root: str | Path):
        self.runs_root = Path(runs_root)
        self.path = self.runs_root / "stage_cache.json"

    def _load(self) -> dict[str, str]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def lookup(self, fingerprint: str) -> str | None:
        """The run that finished a stage with this fingerprint, if any."""
        return self._load().get(fingerprint)

    def record(self, fingerprint: str, run_name: str) -> None:
        cache = self._load()
        cache[fingerprint] = run_name
        write_json(self.path, cache)

    def copy(self, stage: str, fingerprint: str, run_name: str) -> dict | None:
        """Copy a finished stage's outputs (and its summary entries) from another run with the same fingerprint into
        ``<runs_root>/<run_name>``; returns the manifest entry to store, or None when no other run has them."""
        other_name = self.lookup(fingerprint)
        if not other_name or other_name == run_name:
            return None
        other, run_dir = self.runs_root / other_name, self.runs_root / run_name
        try:
            entry = json.loads((other / "manifest.json").read_text())["stages"][stage]
        except (OSError, KeyError, json.JSONDecodeError):
            return None
        spec = STAGES[stage]
        if entry.get("fingerprint") != fingerprint or entry.get("status") != "done":
            return None
        if not spec.outputs_exist(other):
            return None
        spec.clear_outputs(run_dir)
        for top in sorted({out.split("/")[0] for out in spec.outputs}):
            src, dst = other / top, run_dir / top
            if src.is_dir():
                shutil.copytree(src, dst, dirs_exist_ok=True)
            else:
                shutil.copy2(src, dst)
        if entry.get("summary"):
            update_json(run_dir / "summary.json", entry["summary"])
        return entry | {"cached_from": str(other), "seconds": 0.0}
