"""The pipeline's W&B bookkeeping: which environment each stage process gets and what the pipeline itself logs.

Interface used by ``caef/pipeline.py`` (keep it stable):

    tracker = PipelineTracker.from_environ(run_name, context)   # context: {"group", "tags", "config"}
    env = tracker.stage_environ(stage)                           # environment of that stage's process
    tracker.stage_finished(stage, summary, seconds)              # after a stage is verified done
    tracker.finish(summary, run_dir)                             # at the end of a run (or of the slice run)

For a plain run (no ``WANDB_RUN_ID`` / ``WANDB_SWEEP_ID`` in the environment) it logs nothing itself: every stage
logs to its own W&B run, grouped by the run name, as before.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class PipelineTracker:
    """Plain runs: pass the pipeline's W&B context to each stage through ``CAEF_PIPELINE``; log nothing itself."""

    def __init__(self, run_name: str, context: dict[str, Any], environ: Mapping[str, str]):
        self.run_name = run_name
        self.context = context
        self.environ = dict(environ)

    @classmethod
    def from_environ(
        cls, run_name: str, context: dict[str, Any], environ: Mapping[str, str] | None = None
    ) -> PipelineTracker:
        return cls(run_name, context, os.environ if environ is None else environ)

    def stage_environ(self, stage: str) -> dict[str, str]:
        return self.environ | {"CAEF_PIPELINE": json.dumps(self.context)}

    def stage_finished(self, stage: str, summary: dict[str, Any], seconds: float | None) -> None:
        return None

    def finish(self, summary: dict[str, Any], run_dir: Path) -> None:
        return None
