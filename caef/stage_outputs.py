"""What a pipeline stage has produced, checked: "done" means every declared product is there and readable.

The products are declared per stage in ``caef/stage_graph.py`` (a checkpoint, or one file per image of the split);
the image ids come from the data layer for the split the stage ran on (its ``--data.predict_split`` / ``--split``
flag, else its config, else the default), less the entries ``data.skip_bad`` leaves out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from caef.stage_graph import STAGES, Product, unreadable, verify_products

#: (stage, dotted key) -> the stage's setting: its last ``--<key>=`` flag, else its config file's value, else None
Setting = Callable[[str, str], Any]


class StageOutputs:
    """Verifies stages' products under a run folder of ``dataset`` at ``data_root``; ``setting`` reads a stage's
    flags and config."""

    def __init__(self, dataset: str, data_root: str | None, setting: Setting):
        self.dataset, self.data_root, self.setting = dataset, data_root, setting
        self._ids: dict[tuple[str, bool, str | None], list[str]] = {}

    def verify(self, stage: str, run_dir: Path) -> list[tuple[Path, str]]:
        """Every declared product of ``stage`` under ``run_dir`` that is missing or unreadable, with why."""
        spec = STAGES[stage]
        ids = {p: self.split_ids(stage, p) for p in spec.products if p.per_image}
        return verify_products(spec, run_dir, ids)

    def drop_unreadable(self, stage: str, run_dir: Path) -> None:
        """Before a resume: remove per-image files that exist but cannot be read (the writers skip existing files,
        so a damaged one would otherwise stay)."""
        for product in STAGES[stage].products:
            folder = (run_dir / product.path).parent
            if not product.per_image or not folder.is_dir():
                continue
            for path in folder.glob("*" + Path(product.path).suffix):
                if unreadable(path):
                    path.unlink()

    def split_ids(self, stage: str, product: Product) -> list[str]:
        """The image ids of the split ``stage`` wrote ``product`` for."""
        split = str((self.setting(stage, product.split_key) if product.split_key else None) or product.default_split)
        skip_bad = str(self.setting(stage, "data.skip_bad")).lower() == "true"
        cache_dir = self.setting(stage, "data.cache_dir") if skip_bad else None
        key = (split, skip_bad, cache_dir)
        if key not in self._ids:
            from caef.data.datamodule import open_source

            source = open_source(self.dataset, self.data_root, cache_dir, skip_bad=skip_bad)
            self._ids[key] = list(source.split_ids(split))
        return self._ids[key]


def stage_setting(argv: Sequence[str], config: str | None, key: str) -> Any:
    """``key`` (dotted) as a stage gets it: its last ``--<key>=`` flag in ``argv``, else the value in its config
    file, else None."""
    value = None
    for arg in argv:
        if arg.startswith(f"--{key}="):
            value = arg.split("=", 1)[1]
    return value if value is not None else yaml_value(config, key.split("."))


def yaml_value(path: str | None, keys: Sequence[str]) -> Any:
    if not path or not Path(path).is_file():
        return None
    node: Any = yaml.safe_load(Path(path).read_text()) or {}
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node
