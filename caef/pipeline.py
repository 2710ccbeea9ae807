"""``caef pipeline CONFIG``: a whole experiment, stage by stage, verified, cached and resumable.

    classifier -> cgnet -> cams -> crf -> affinity -> pseudo -> deeplab (+ fully_supervised, the upper bound)

Each stage is one ``caef`` command in its own process group (clean W&B runs, no state shared between stages) under
``<runs_root>/<name>/``, which one pipeline at a time holds (``caef/run_lock.py``). ``manifest.json`` there records,
per stage, its argv, a fingerprint (its config file, argv, upstream fingerprints and caef's code), the identity of
the upstream results it was built on, its status, time and complete summary entries.

"Done" means verified: every product its spec declares (``caef/stage_graph.py``: a loadable checkpoint, one file
per image of the split) is there and readable. On a rerun a done, verified stage with an unchanged fingerprint and
inputs is skipped; one whose outputs were damaged redoes what is missing (offline stages write only the missing
files; a training stage with an unreadable checkpoint trains again); a ``running`` or ``interrupted`` stage
resumes -- training from its last readable checkpoint, offline stages from the files not yet written; a stage
whose fingerprint or inputs changed starts clean (its old outputs are removed) and says why (settings, code,
upstream). A stage that another run under the same ``runs_root`` finished with the same fingerprint and inputs is
copied from it (``caef/stage_cache.py``). SIGTERM/SIGINT stop the running stage's process group, mark it
``interrupted`` and end with one line. ``--from``/``--until`` select a slice; ``--dry_run`` prints the commands
and writes nothing. ``parallel_stages: N`` runs up to N consecutive independent stages side by side
(``caef/stage_schedule.py``), each writing its output to ``logs/<stage>.log``; ``precision`` sets the network
stages' ``trainer.precision`` (``caef/precision_policy.py``). What each stage runs and its
fingerprint: ``caef/stage_commands.py``; the experiment file: ``caef/pipeline_config.py``; the command line:
``caef/pipeline_cli.py``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from caef import code_fingerprint
from caef.errors import CaefError
from caef.io import update_json, write_json
from caef.pipeline_config import PipelineConfig, check_run_name
from caef.pipeline_tracking import PipelineTracker, params_from_overrides
from caef.reported_metrics import SUMMARY_PREFIXES
from caef.run_facts import run_facts, versions, wandb_context
from caef.run_layout import SUMMARY
from caef.run_lock import RunLock
from caef.stage_cache import StageCache
from caef.stage_commands import StageCommands
from caef.stage_graph import LIGHTNING_STAGES, ORDER, STAGES, StageSpec
from caef.stage_outputs import StageOutputs
from caef.stage_runner import Interrupted, resume_checkpoint, run_stage_process, stop_signals
from caef.stage_schedule import print_tail, stage_groups, stage_threads, thread_share, wall_seconds

# the stage graph is re-exported: ``from caef.pipeline import STAGES, ORDER, ...`` keeps working
__all__ = ["LIGHTNING_STAGES", "ORDER", "STAGES", "Pipeline", "PipelineConfig", "StageSpec"]


class Pipeline(StageCommands):
    """Runs the stages of ``config`` in order under ``<runs_root>/<name>``; see the module docstring.

    ``keep_stale_code``: keep done stages that older caef code computed (same settings) instead of rerunning them."""

    def __init__(
        self,
        config: PipelineConfig,
        overrides: dict[str, list[str]] | None = None,
        python: str | None = None,
        keep_stale_code: bool = False,
        threads: dict[str, str] | None = None,
    ):
        check_run_name(config.name)
        super().__init__(config, overrides)
        self.python = python or sys.executable
        self.keep_stale_code = keep_stale_code
        self.threads = threads or {}  # OMP/MKL_NUM_THREADS of every stage (a sweep's share); {}: the environment's
        self.manifest_path = self.run_dir / "manifest.json"
        self.cache = StageCache(config.runs_root)
        self.code = code_fingerprint.code_identity()
        self.tracker: PipelineTracker | None = None
        self.outputs = StageOutputs(config.dataset, config.data_root, self._setting)
        self._verified: set[str] = set()  # stages whose products this run has verified
        self._manifest_lock = threading.RLock()  # stages run side by side update one manifest

    # -- running ---------------------------------------------------------------------------------------------------
    def run(self, start: str | None = None, until: str | None = None, dry_run: bool = False) -> dict:
        """Run (or with ``dry_run`` print) the stages from ``start`` to ``until``; SIGTERM/SIGINT end it with a
        CaefError saying which stage was stopped."""
        try:
            with stop_signals(threading.current_thread() is threading.main_thread()):
                return self._run(start, until, dry_run)
        except Interrupted as stop:
            during = f" during stage {stop.stage!r} (its processes were stopped)" if stop.stage else ""
            raise CaefError(
                f"interrupted by {signal.Signals(stop.signum).name}{during}; rerun the same command to resume"
            ) from None

    def _run(self, start: str | None, until: str | None, dry_run: bool) -> dict:
        stages = self.stages()
        for bound in (start, until):
            if bound is not None and bound not in stages:
                raise CaefError(f"--from/--until {bound!r} is not a stage of this pipeline ({', '.join(stages)})")
        selected = stages[stages.index(start) if start else 0 : (stages.index(until) if until else len(stages)) + 1]
        for stage in stages:
            self.needs(stage)
        self._check_data()
        self.check_flags(selected)
        if dry_run:  # reads the manifest if there is one; writes nothing anywhere
            manifest = self._load_manifest()
            for stage in selected:
                action, why, argv = self._resumable(stage, *self._plan(stage, manifest))
                if action != "skip":
                    print(f"\n[caef pipeline] {stage} ({STAGES[stage].help}): {why}\n  caef {' '.join(argv)}")
            return {}
        with RunLock(self.run_dir) as lock:
            context, params = wandb_context(self.config, self._facts()), params_from_overrides(self.overrides)
            self.tracker = PipelineTracker.from_environ(self.config.name, context, run_dir=self.run_dir, params=params)
            manifest = self._load_manifest()
            manifest["code"] = self.code
            group: tuple[str, ...] = ()
            try:
                for group in stage_groups(selected, self.needs, self.config.parallel_stages):
                    self._run_group(group, manifest, lock)
                summary = self._finish(manifest)
            except Interrupted as stop:
                stopped = [s for s in group if manifest["stages"].get(s, {}).get("status") in ("running", "failed")]
                for stage in stopped:  # a side-by-side stage stopped by the signal reads as failed: it was not
                    manifest["stages"][stage]["status"] = "interrupted"
                if stopped:
                    self._save_manifest(manifest)
                    stop.stage = ", ".join(stopped)
                self.tracker.abort("interrupted", 128 + stop.signum)
                raise
            except BaseException:
                self.tracker.abort("failed", 1)
                raise
            self.tracker.finish(summary, self.run_dir)
            return summary

    def _plan(self, stage: str, manifest: dict) -> tuple[str, str, list[str]]:
        """What to do with ``stage``: ``("skip" | "resume" | "repair" | "fresh", why, argv)``; prints the decision."""
        spec, entry = STAGES[stage], manifest["stages"].get(stage, {})
        same, stale = self._matches(stage, manifest)
        status = entry.get("status")
        argv = self.argv(stage)
        if same and status == "done":
            bad = self._verify(stage)
            if not bad:
                note = (
                    f" -- kept, computed by older code (sources {entry.get('code')}; --keep_stale_code)"
                    if stale
                    else ""
                )
                print(f"[caef pipeline] {stage}: done, verified, unchanged -- skipped{note}", flush=True)
                return "skip", "", argv
            example = f"{bad[0][0]} ({bad[0][1]})"
            why = f"{len(bad)} output(s) missing or unreadable, e.g. {example}"
            if spec.trains:
                return "fresh", f"{why}: training it again", argv
            return "repair", f"{why}: writing them again", argv
        if same and status in ("running", "interrupted", "failed"):
            return "resume", f"{status} -- resuming", argv
        settings, fingerprint = self.fingerprints(stage, manifest)
        inputs = self._inputs(stage, manifest)
        if not entry:
            why = "not run yet"
        elif "settings" not in entry:
            why = "recorded by an older caef, without code fingerprints"
        elif entry.get("settings") != settings:
            why = "its settings or an upstream stage's changed"
        elif entry.get("fingerprint") != fingerprint:
            why = f"the code changed (caef sources {entry.get('code')} -> {self.code['sources']})"
        else:
            changed = [n for n in inputs if entry.get("inputs", {}).get(n) != inputs[n]]
            why = f"upstream {', '.join(changed)} was recomputed"
        return "fresh", why, argv

    def _resumable(self, stage: str, action: str, why: str, argv: list[str]) -> tuple[str, str, list[str]]:
        """A training stage resumes from its last readable checkpoint, or starts again when there is none."""
        spec = STAGES[stage]
        if action != "resume" or not spec.checkpoint:
            return action, why, argv
        checkpoint = resume_checkpoint(self.run_dir / spec.checkpoint)
        if checkpoint is None:
            return "fresh", f"{why}, but no readable checkpoint: starting the stage again", argv
        return action, why, [*argv, f"--ckpt_path={checkpoint}"]

    def _run_group(self, group: tuple[str, ...], manifest: dict, lock: RunLock) -> None:
        """One stage, or several independent ones side by side (each with its share of the CPU threads and its
        output in ``logs/<stage>.log``); every stage of a group finishes before a failure is raised."""
        unchanged = [s for s in group if self._unchanged(s, manifest)]
        for stage in unchanged:  # checked and skipped first: only the stages that run share the threads
            self._run_stage(stage, manifest, lock)
        group = tuple(s for s in group if s not in unchanged)
        if len(group) <= 1:
            for stage in group:
                self._run_stage(stage, manifest, lock)
            return
        from concurrent.futures import ThreadPoolExecutor, wait

        share, logs = thread_share(len(group), {**os.environ, **self.threads}), self.run_dir / "logs"
        print(
            f"\n[caef pipeline] {', '.join(group)} side by side ({share['OMP_NUM_THREADS']} CPU thread(s) each; "
            f"output in {logs}/<stage>.log)",
            flush=True,
        )
        with ThreadPoolExecutor(len(group), thread_name_prefix="caef-stage") as pool:
            futures = [pool.submit(self._run_stage, s, manifest, lock, share, logs / f"{s}.log") for s in group]
            wait(futures)  # a signal to the pipeline raises Interrupted here, once every stage process is stopped
        failures = [future.exception() for future in futures if future.exception() is not None]
        for other in failures[1:]:  # the first is raised; the others are not lost
            print(f"[caef pipeline] also: {other}", file=sys.stderr, flush=True)
        if failures:
            raise failures[0]

    def _unchanged(self, stage: str, manifest: dict) -> bool:
        """Done with the same fingerprint and inputs: a rerun will skip it once its outputs verify."""
        return self._matches(stage, manifest)[0] and manifest["stages"].get(stage, {}).get("status") == "done"

    def _matches(self, stage: str, manifest: dict) -> tuple[bool, bool]:
        """(same, stale): the manifest entry has this run's fingerprint (or, with ``--keep_stale_code``, only its
        settings) and inputs; stale: only the code differs."""
        entry = manifest["stages"].get(stage, {})
        settings, fingerprint = self.fingerprints(stage, manifest)
        stale = entry.get("settings") == settings and entry.get("fingerprint") != fingerprint
        same = entry.get("fingerprint") == fingerprint or (stale and self.keep_stale_code)
        return same and entry.get("inputs", {}) == self._inputs(stage, manifest), stale

    def _inputs(self, stage: str, manifest: dict) -> dict[str, str | None]:
        """The run ids of the upstream results ``stage`` reads."""
        return {need: manifest["stages"].get(need, {}).get("run_id") for need in self.needs(stage)}

    def _run_stage(
        self, stage: str, manifest: dict, lock: RunLock, env: dict | None = None, log: Path | None = None
    ) -> None:
        spec = STAGES[stage]
        for need in self.needs(stage):
            if need not in self.config.stages:
                continue
            if manifest["stages"].get(need, {}).get("status") != "done":
                raise CaefError(f"stage {stage!r} needs {need!r}, which has not finished; run it first (--from {need})")
            bad = [] if need in self._verified else self._verify(need)  # a stage before --from is checked here
            if bad:
                raise CaefError(
                    f"stage {stage!r} needs {need!r}, but {len(bad)} of its outputs are missing or unreadable, e.g. "
                    f"{bad[0][0]} ({bad[0][1]}); rerun from it (--from {need})"
                )
            self._verified.add(need)
        action, why, argv = self._resumable(stage, *self._plan(stage, manifest))
        self._verified.add(stage)  # skipped as verified, or verified once it has run (else the run stops)
        entry = manifest["stages"].get(stage, {})
        settings, fingerprint = self.fingerprints(stage, manifest)
        inputs = self._inputs(stage, manifest)
        if action == "skip":
            with self._manifest_lock:
                self._tracked(stage, manifest)
            return
        if action == "fresh" and self._reuse_cached(stage, fingerprint, inputs, manifest, why):
            return
        if action in ("resume", "repair"):
            self.outputs.drop_unreadable(stage, self.run_dir)
        else:
            spec.clear_outputs(self.run_dir)
        print(f"\n[caef pipeline] {stage} ({spec.help}): {why}\n  caef {' '.join(argv)}", flush=True)
        keep_id = action in ("resume", "repair") and entry.get("run_id")
        seconds = entry.get("seconds", 0.0) if action in ("resume", "repair") else 0.0
        environ = self.tracker.stage_environ(stage) | self.threads | (env or {})
        self._save_entry(manifest, stage, {
            "status": "running", "fingerprint": fingerprint, "settings": settings, "inputs": inputs,
            "run_id": keep_id or uuid.uuid4().hex[:12], "code": self.code["sources"], "argv": argv,
            "config": self.config.stages[stage]["config"], "needs": list(self.needs(stage)),
            "outputs": list(spec.outputs), "seconds": seconds, "threads": stage_threads(environ), "started": _now(),
        }, replace=True)  # fmt: skip
        before = self._summary()
        start = time.perf_counter()
        try:
            code = run_stage_process([self.python, "-m", "caef.cli", *argv], environ, lock, log)
        finally:
            with self._manifest_lock:
                manifest["stages"][stage]["seconds"] = round(seconds + time.perf_counter() - start, 1)
        if code != 0:
            self._save_entry(manifest, stage, {"status": "failed"})
            if log is not None:
                print_tail(log, f"[caef pipeline] {stage} failed; the end of {log}:")
            raise CaefError(
                f"stage {stage!r} failed (exit code {code}); fix the cause and rerun the same command: finished "
                f"stages are kept and {stage!r} resumes"
            )
        bad = self._verify(stage)
        if bad:
            self._save_entry(manifest, stage, {"status": "failed"})
            raise CaefError(
                f"stage {stage!r} finished but {len(bad)} of its outputs are missing or unreadable, e.g. {bad[0][0]} "
                f"({bad[0][1]}); rerun the same command to redo them"
            )
        after = self._summary()
        prefixes = SUMMARY_PREFIXES.get(stage, ())
        own = {k: v for k, v in after.items() if k.startswith(prefixes) or before.get(k) != v} if prefixes else {}
        own = own or {k: v for k, v in after.items() if before.get(k) != v}
        if log is not None:
            print(f"[caef pipeline] {stage}: done in {manifest['stages'][stage]['seconds']:.0f} s", flush=True)
        self._save_entry(manifest, stage, {"status": "done", "finished": _now(), "summary": own})
        with self._manifest_lock:
            self.cache.record(fingerprint, self.config.name)
            self._tracked(stage, manifest)

    def _tracked(self, stage: str, manifest: dict) -> None:
        entry = manifest["stages"][stage]
        if self.tracker is not None:
            self.tracker.stage_finished(stage, dict(entry.get("summary") or {}), entry.get("seconds"))

    def _reuse_cached(self, stage: str, fingerprint: str, inputs: dict, manifest: dict, why: str) -> bool:
        """A stage with the same fingerprint and inputs finished (verified) in another run: copy it."""
        entry = self.cache.copy(stage, fingerprint, self.config.name, inputs, lambda d: self._verify(stage, d))
        if entry is None:
            return False
        self._save_entry(manifest, stage, entry, replace=True)
        print(
            f"[caef pipeline] {stage}: {why}; same inputs, config and code as in {entry['cached_from']} -- copied",
            flush=True,
        )
        with self._manifest_lock:
            self._tracked(stage, manifest)
        return True

    def _verify(self, stage: str, run_dir: Path | None = None) -> list[tuple[Path, str]]:
        return self.outputs.verify(stage, run_dir or self.run_dir)

    # -- facts and summary -----------------------------------------------------------------------------------------
    def _summary(self) -> dict:
        path = self.run_dir / SUMMARY
        try:
            return json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError:
            return {}

    def _check_data(self) -> None:
        root = self.config.data_root
        if root and self.config.dataset != "synthetic" and not Path(root).exists():
            raise CaefError(f"dataset root {root} not found.\n{self.config.data_help}".rstrip())

    def _facts(self) -> dict:
        return run_facts(self.config, self._setting)

    def _finish(self, manifest: dict) -> dict:
        times = {s: manifest["stages"][s].get("seconds") for s in ORDER if s in manifest["stages"]}
        times = {s: t for s, t in times.items() if manifest["stages"][s].get("status") == "done"}
        groups = stage_groups(list(times), self.needs, self.config.parallel_stages)
        summary = update_json(
            self.run_dir / SUMMARY,
            self._facts()
            | {
                "config_hash": self.config_hash(),
                "overrides": self.overrides,
                "stage_seconds": times,
                "stage_threads": {s: manifest["stages"][s].get("threads") for s in times},  # a copy keeps its own
                "total_seconds": wall_seconds(groups, times),  # side-by-side stages count once
                "stage_groups": [list(g) for g in groups if len(g) > 1],
                "versions": versions(),
                "code": self.code,
            },
        )
        self._report()
        return summary

    def _report(self) -> None:
        """``report.md`` with plots; a failure here is reported, never fatal (the results are already saved)."""
        try:
            from caef.data.datamodule import open_source
            from caef.report import write_report

            write_report(self.run_dir, open_source(self.config.dataset, self.config.data_root))
        except Exception as exc:  # noqa: BLE001 -- the report is a convenience on top of saved results
            print(f"[caef pipeline] report not written: {type(exc).__name__}: {exc}", file=sys.stderr)

    def _load_manifest(self) -> dict:
        if self.manifest_path.is_file():
            try:
                return json.loads(self.manifest_path.read_text())
            except json.JSONDecodeError as exc:
                raise CaefError(f"{self.manifest_path} is corrupt ({exc}); delete it to rerun every stage") from exc
        return {"name": self.config.name, "stages": {}}

    def _save_entry(self, manifest: dict, stage: str, fields: dict, replace: bool = False) -> None:
        """Set (``replace``: the whole entry) or update ``stage``'s manifest entry and save the manifest."""
        with self._manifest_lock:
            if replace or stage not in manifest["stages"]:
                manifest["stages"][stage] = dict(fields)
            else:
                manifest["stages"][stage].update(fields)
            self._save_manifest(manifest)

    def _save_manifest(self, manifest: dict) -> None:
        with self._manifest_lock:  # one writer at a time, and no entry changes while it is serialised
            write_json(self.manifest_path, manifest)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
