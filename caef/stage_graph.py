"""The stages of ``caef pipeline``: which ``caef`` command each runs, what it needs, what it leaves behind.

One table, read by the pipeline (order, argv, resume and skip), the stage cache (what to copy) and the command line
(``--from``/``--until`` choices, ``--<stage>.<key>`` flags), so a new stage is one entry here.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

LIGHTNING_STAGES = ("classifier", "cgnet", "affinity", "deeplab")


@dataclass(frozen=True)
class StageSpec:
    """One pipeline step: which ``caef`` command it runs, what it needs, what it leaves behind."""

    name: str
    command: tuple[str, ...]  # e.g. ("cgnet", "predict")
    needs: tuple[str, ...]
    outputs: tuple[str, ...]  # paths under the run dir that must exist once it is done
    checkpoint: str | None = None  # train stages: <run_dir>/<checkpoint> to resume from
    help: str = ""

    @property
    def trains(self) -> bool:
        return self.command[-1] == "fit"

    def outputs_exist(self, run_dir: Path) -> bool:
        return all((run_dir / out).exists() for out in self.outputs)

    def clear_outputs(self, run_dir: Path) -> None:
        """A fresh start: remove what an earlier run of this stage (other config or inputs) left behind."""
        paths = {run_dir / out.split("/")[0] if self.trains else run_dir / out for out in self.outputs}
        for path in paths:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


STAGES: dict[str, StageSpec] = {
    s.name: s
    for s in (
        StageSpec("classifier", ("classifier", "fit"), (), ("classifier/last.ckpt",), "classifier/last.ckpt",
                  "ordinary classifier"),
        StageSpec("cgnet", ("cgnet", "fit"), ("classifier",), ("cgnet/last.ckpt",), "cgnet/last.ckpt",
                  "CGNet (adversarial erasing against the frozen classifier)"),
        StageSpec("cams", ("cgnet", "predict"), ("cgnet",), ("cams/cgnet",), None, "CGNet CAM export"),
        StageSpec("crf", ("crf",), ("cams",), ("seeds/low", "seeds/high"), None, "dense-CRF seeds"),
        StageSpec("affinity", ("affinity", "fit"), ("cgnet", "crf"), ("affinity/last.ckpt",), "affinity/last.ckpt",
                  "AffinityNet"),
        StageSpec("pseudo", ("affinity", "predict"), ("affinity", "cams", "crf"), ("pseudo",), None,
                  "random walk -> pseudo labels (scored)"),
        StageSpec("deeplab", ("deeplab", "fit"), ("pseudo",), ("deeplab/last.ckpt",), "deeplab/last.ckpt",
                  "DeepLab on pseudo labels"),
        StageSpec("fully_supervised", ("deeplab", "fit"), (), ("fully_supervised/last.ckpt",),
                  "fully_supervised/last.ckpt", "DeepLab on ground truth (upper bound)"),
    )
}  # fmt: skip
ORDER = tuple(STAGES)
