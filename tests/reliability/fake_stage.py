"""A stand-in for a stage process, for pipeline tests that need the run layer, not the training.

``Pipeline(python=<fake_python(tmp)>)`` runs ``<fake> -m caef.cli <command> ... --run_dir=R ...``; the fake reads
``FAKE_STAGE`` from its environment: ``write`` (default) leaves a loadable ``<R>/<stage>/last.ckpt`` and merges the
JSON object ``FAKE_SUMMARY`` into ``<R>/summary.json``; ``sleep`` starts a child (same process group), writes both
pids to ``FAKE_PIDS`` (``{stage}`` in it: the stage's name) and sleeps; ``fail`` exits 1.
``FAKE_STAGE_<STAGE>`` (e.g. ``FAKE_STAGE_CLASSIFIER``) sets the mode of one stage. With ``FAKE_TRACE`` a writing
stage sleeps ``FAKE_SLEEP`` seconds and appends ``{stage, start, end, threads}`` (``OMP_NUM_THREADS``) to that file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def fake_python(folder: Path) -> str:
    """An executable that runs this module with the arguments a stage process gets."""
    script = folder / "fake-python"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} "$@"\n')
    script.chmod(0o755)
    return str(script)


def main(argv: list[str]) -> int:
    flags = dict(a.removeprefix("--").split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    run_dir = Path(flags.get("run_dir", "."))
    stage = flags.get("stage_dir") or argv[2]
    mode = os.environ.get(f"FAKE_STAGE_{stage.upper()}", os.environ.get("FAKE_STAGE", "write"))
    print(f"fake stage {stage}: {mode}", flush=True)
    if mode == "fail":
        print("RuntimeError: the fake stage failed", file=sys.stderr)
        return 1
    if mode == "sleep":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        Path(os.environ["FAKE_PIDS"].format(stage=stage)).write_text(json.dumps([os.getpid(), child.pid]))
        time.sleep(300)
        return 0
    import torch

    from caef.io import atomic_path, update_json

    if os.environ.get("FAKE_TRACE"):
        start = time.time()
        time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
        trace = {
            "stage": stage,
            "start": start,
            "end": time.time(),
            "threads": os.environ.get("OMP_NUM_THREADS"),
            "run": str(run_dir),
        }
        with open(os.environ["FAKE_TRACE"], "a") as f:
            f.write(json.dumps(trace) + "\n")

    with atomic_path(run_dir / stage / "last.ckpt") as tmp:
        torch.save({"state_dict": {}, "stage": stage}, tmp)
    update_json(run_dir / "summary.json", json.loads(os.environ.get("FAKE_SUMMARY", "{}")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
