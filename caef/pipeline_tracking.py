"""The pipeline's W&B bookkeeping: which environment each stage process gets and what the pipeline itself logs.

Interface used by ``caef/pipeline.py`` (keep it stable):

    tracker = PipelineTracker.from_environ(run_name, context)   # context: {"group", "tags", "config"}
    env = tracker.stage_environ(stage)                           # environment of that stage's process
    tracker.stage_finished(stage, summary, seconds)              # after a stage is verified done
    tracker.finish(summary, run_dir)                             # at the end of a run (or of the slice run)
    tracker.abort("interrupted", exit_code)                      # SIGINT/SIGTERM or a failed stage (optional)

For a plain run (no ``WANDB_RUN_ID`` / ``WANDB_SWEEP_ID`` in the environment) it logs nothing itself: every stage
logs to its own W&B run, grouped by the run name, as before.

Under ``wandb agent`` (``WANDB_RUN_ID`` and ``WANDB_SWEEP_ID`` set, the point's parameters in the file
``WANDB_SWEEP_PARAM_PATH``) the run the sweep created belongs to the pipeline process: a
:class:`WandbPipelineTracker` opens it (job type ``pipeline``, group = run name, config = the sweep parameters and
the run's facts), logs each stage's ``summary.json`` metrics under their own names as soon as the stage is done (the
sweep's metric, and a stopped sweep still shows what finished), and at the end the stage times, the stage runs and
the report's plots and tables. The stage processes never see the agent's variables: each gets a fresh run id in
the same group, otherwise every stage would take over the sweep's run in turn.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from caef.errors import CaefError
from caef.reported_metrics import evaluation_of, loggable

#: what ``wandb agent`` (wandb/wandb_agent.py) or a parent W&B process puts into a child's environment to bind it
#: to one particular run; a stage process must start its own run instead. ``WANDB_ENTITY``, ``WANDB_PROJECT`` and
#: ``WANDB_DIR``, which the agent also sets, stay: the stages log to the sweep's project.
RUN_BINDING_VARIABLES = (
    "WANDB_RUN_ID",
    "WANDB_SWEEP_ID",
    "WANDB_SWEEP_PARAM_PATH",
    "WANDB_RESUME",
    "WANDB_RUN_STORAGE_ID",
    "WANDB_RUN_DIR",
    "WANDB_NAME",
    "WANDB_NOTES",
    "WANDB_JOB_TYPE",
    "WANDB_SERVICE",  # the parent's W&B service: a stage starts its own
)


class PipelineTracker:
    """Plain runs: pass the pipeline's W&B context to each stage through ``CAEF_PIPELINE``; log nothing itself."""

    def __init__(self, run_name: str, context: dict[str, Any], environ: Mapping[str, str]):
        self.run_name = run_name
        self.context = context
        self.environ = dict(environ)

    @classmethod
    def from_environ(
        cls,
        run_name: str,
        context: dict[str, Any],
        environ: Mapping[str, str] | None = None,
        *,
        run_dir: str | Path | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> PipelineTracker:
        """A :class:`WandbPipelineTracker` when the environment names a W&B run or sweep (``wandb agent``), else the
        plain tracker. ``run_dir`` places the pipeline run's W&B files (``<run_dir>/wandb``, beside the stages');
        ``params`` are the sweep parameters to record when no agent parameter file exists (the pipeline's flags)."""
        environ = dict(os.environ if environ is None else environ)
        if environ.get("WANDB_RUN_ID") or environ.get("WANDB_SWEEP_ID"):
            return WandbPipelineTracker(run_name, context, environ, run_dir=run_dir, params=params)
        return cls(run_name, context, environ)

    def stage_environ(self, stage: str) -> dict[str, str]:
        return self.environ | {"CAEF_PIPELINE": json.dumps(self.context)}

    def stage_finished(self, stage: str, summary: dict[str, Any], seconds: float | None) -> None:
        return None

    def finish(self, summary: dict[str, Any], run_dir: Path) -> None:
        return None

    def abort(self, status: str = "interrupted", exit_code: int = 130) -> None:
        """The pipeline stopped early (``status``: interrupted by a signal, failed); nothing to close here."""
        return None

    def __enter__(self) -> PipelineTracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            interrupted = issubclass(exc_type, KeyboardInterrupt)
            self.abort("interrupted" if interrupted else "failed", 130 if interrupted else 1)


class WandbPipelineTracker(PipelineTracker):
    """The pipeline process owns the W&B run named by ``WANDB_RUN_ID`` (a sweep agent's); see the module doc."""

    def __init__(
        self,
        run_name: str,
        context: dict[str, Any],
        environ: Mapping[str, str],
        *,
        run_dir: str | Path | None = None,
        params: Mapping[str, Any] | None = None,
    ):
        super().__init__(run_name, context, environ)
        self.run_id = self.environ.get("WANDB_RUN_ID") or None
        self.sweep_id = self.environ.get("WANDB_SWEEP_ID") or None
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.params = sweep_params(self.environ, params)
        self.stage_runs: dict[str, str] = {}  # stage -> the W&B run id its process was given
        self.stage_seconds: dict[str, float] = {}
        self._logged: dict[str, Any] = {}
        self._run: Any = None
        self._closed = False

    # -- the pipeline's own run ------------------------------------------------------------------------------------
    @property
    def run(self) -> Any:
        """The agent's run, opened on first use (a dry run opens nothing)."""
        if self._run is None:
            import wandb

            facts = dict(self.context.get("config") or {})
            config = facts | dict(self.params)
            with signals_deferred():  # a Ctrl-C inside init would leave a run that no one can close
                self._run = wandb.init(
                    id=self.run_id,
                    group=self.context.get("group") or self.run_name,
                    job_type="pipeline",
                    name=self.run_name,
                    tags=list(self.context.get("tags") or []),
                    config=config,
                    dir=None if self.run_dir is None else str(self._wandb_parent()),
                    reinit="create_new",
                )
            self.run_id = self._run.id
        return self._run

    def _wandb_parent(self) -> Path:
        assert self.run_dir is not None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return self.run_dir

    def stage_environ(self, stage: str) -> dict[str, str]:
        """The environment without the agent's run binding, plus a fresh run id for the stage in the same group."""
        from wandb.sdk.lib.runid import generate_id

        pipeline_run = self.run.id
        stage_run = generate_id()
        self.stage_runs[stage] = stage_run
        env = {k: v for k, v in self.environ.items() if k not in RUN_BINDING_VARIABLES}
        context = dict(self.context)
        context["config"] = dict(context.get("config") or {}) | {"pipeline_run_id": pipeline_run}
        if self.sweep_id:
            context["config"]["sweep_id"] = self.sweep_id
        return env | {
            "WANDB_RUN_ID": stage_run,
            "WANDB_RUN_GROUP": str(self.context.get("group") or self.run_name),
            "CAEF_PIPELINE": json.dumps(context),
        }

    def stage_finished(self, stage: str, summary: dict[str, Any], seconds: float | None) -> None:
        """Log the stage's ``summary.json`` metrics (those not logged yet with the same value) and its run id."""
        if seconds is not None:
            self.stage_seconds[stage] = seconds
        with signals_deferred():
            self._log_new(summary)
            self._log_stage_runs()

    def finish(self, summary: dict[str, Any], run_dir: Path) -> None:
        """Log what is left of the summary (stage times, totals), the stage runs and the report; close the run."""
        if self._closed:
            return
        self.run_dir = self.run_dir or Path(run_dir)
        with signals_deferred():
            self._log_new(summary)
            self._log_stage_runs()
            try:
                self._log_report(Path(run_dir), summary)
            except Exception as exc:  # noqa: BLE001 -- the metrics are logged; the report's copy is a convenience
                print(f"[caef pipeline] report not logged to W&B: {type(exc).__name__}: {exc}", file=sys.stderr)
            self._close("finished", 0)

    def abort(self, status: str = "interrupted", exit_code: int = 130) -> None:
        """Close the run early: ``pipeline_status`` says why, the exit code marks it failed in W&B (a run the
        pipeline never opened stays unopened)."""
        if self._run is not None and not self._closed:
            with signals_deferred():
                self._close(status, exit_code)

    def _close(self, status: str, exit_code: int) -> None:
        self.run.summary["pipeline_status"] = status
        self._closed = True
        self.run.finish(exit_code=exit_code)

    # -- what is logged --------------------------------------------------------------------------------------------
    def _log_new(self, summary: Mapping[str, Any]) -> None:
        new = {k: v for k, v in loggable(summary).items() if self._logged.get(k) != v}
        if new:
            self.run.log(new)
            self._logged.update(new)
        for key, value in summary.items():  # how each DeepLab mIoU was computed travels with it (not a metric)
            if key.endswith("_evaluation") and self.run.summary.get(key) != value:
                self.run.summary[key] = value

    def _log_stage_runs(self) -> None:
        """``stage_runs``: stage -> its W&B run id (and ``stage_run_urls`` online), for stages whose process did
        start a W&B run (its folder ``<run_dir>/wandb/*-<id>`` exists; a stage without a W&B logger has none)."""
        started = {s: i for s, i in self.stage_runs.items() if self._stage_run_exists(i)}
        if not started or self.run.summary.get("stage_runs") == started:
            return
        self.run.summary["stage_runs"] = started
        base = self.run.project_url  # None offline
        if base:
            self.run.summary["stage_run_urls"] = {s: f"{base}/runs/{i}" for s, i in started.items()}

    def _stage_run_exists(self, run_id: str) -> bool:
        return self.run_dir is not None and any((self.run_dir / "wandb").glob(f"*run-*-{run_id}"))

    def _log_report(self, run_dir: Path, summary: Mapping[str, Any]) -> None:
        """The report's tables (every stage's mIoU, per-class IoU, the stage runs) and its plots; ``report.md``
        itself as a run file."""
        import wandb

        from caef.report import IOU_KEYS, METRIC_ROWS

        rows = [[label, key, summary[key], evaluation_of(summary, key)]
                for key, label in METRIC_ROWS if summary.get(key) is not None]  # fmt: skip
        columns = ["stage", "key", "miou", "evaluation"]  # evaluation: DeepLab's (plain; flip, dense CRF; ...)
        tables: dict[str, Any] = {"report/metrics": wandb.Table(columns=columns, data=rows)}
        iou = [(key, label) for key, label in IOU_KEYS if isinstance(summary.get(key), Mapping)]
        if iou:
            classes = list(summary[iou[0][0]])
            data = [[name, *(summary[key].get(name) for key, _ in iou)] for name in classes]
            tables["report/iou_per_class"] = wandb.Table(columns=["class", *(label for _, label in iou)], data=data)
        threads = summary.get("stage_threads") or {}
        runs = [[s, i, self.stage_seconds.get(s, (summary.get("stage_seconds") or {}).get(s)), threads.get(s)]
                for s, i in self.stage_runs.items() if self._stage_run_exists(i)]  # fmt: skip
        if runs:
            tables["report/stage_runs"] = wandb.Table(columns=["stage", "run_id", "seconds", "threads"], data=runs)
        images = {f"report/{png.stem}": wandb.Image(str(png)) for png in sorted(run_dir.glob("*.png"))}
        self.run.log(tables | images)
        if (run_dir / "report.md").is_file():
            self.run.save(str(run_dir / "report.md"), base_path=str(run_dir), policy="now")


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGTERM/SIGINT arriving in the block are delivered when it ends: W&B calls (opening, logging, closing the
    run) are not cut short, so the pipeline's handler finds the run in a state it can close as interrupted. Only the
    main thread can handle signals; elsewhere the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum)) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if pending:
            signal.raise_signal(pending[0])


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def sweep_params(environ: Mapping[str, str], fallback: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The point's parameters: the agent's parameter file (``WANDB_SWEEP_PARAM_PATH``: ``name: {value: v}``
    entries after a ``wandb_version`` line), else ``fallback`` (the pipeline's own flags)."""
    path = environ.get("WANDB_SWEEP_PARAM_PATH")
    if not path:
        return dict(fallback or {})
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CaefError(f"W&B sweep parameter file {path} (WANDB_SWEEP_PARAM_PATH) unreadable: {exc}") from exc
    if not isinstance(raw, dict):
        raise CaefError(f"W&B sweep parameter file {path} (WANDB_SWEEP_PARAM_PATH) must hold a mapping")
    return {
        name: spec["value"] if isinstance(spec, dict) and "value" in spec else spec
        for name, spec in raw.items()
        if name != "wandb_version"
    }


def params_from_overrides(overrides: Mapping[str, list[str]]) -> dict[str, Any]:
    """``{stage: ["--model.masking_depth=3"]}`` -> ``{"cgnet.model.masking_depth": "3"}`` (the agent's names)."""
    out: dict[str, Any] = {}
    for stage, flags in overrides.items():
        for flag in flags:
            key, _, value = flag.removeprefix("--").partition("=")
            out[f"{stage}.{key}"] = yaml.safe_load(value) if value else value
    return out
