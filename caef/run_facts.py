"""The facts of a pipeline run that its summary and every stage's W&B run carry: seed, dataset, backbones,
masking depth, erasing, each network stage's precision, package versions; read from the stage flags, else the
stage configs, so they state what actually ran."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from caef.stage_graph import LIGHTNING_STAGES, STAGES

#: (stage, dotted key) -> that stage's setting (its last ``--<key>=`` flag, else its config's value, else None)
Setting = Callable[[str, str], Any]


def run_facts(config: Any, setting: Setting) -> dict[str, Any]:
    """Seed, dataset, backbones, masking depth and erasing of the run of ``config`` (a PipelineConfig)."""
    facts: dict[str, Any] = {"name": config.name, "seed": config.seed, "dataset": config.dataset}
    for stage, key in (("classifier", "classifier_backbone"), ("cgnet", "cgnet_backbone")):
        if stage in config.stages:
            facts[key] = setting(stage, "model.backbone")
    if "cgnet" in config.stages:
        depth = setting("cgnet", "model.masking_depth")
        facts["masking_depth"] = int(depth) if depth is not None else 0
        erasing = setting("cgnet", "model.erasing")
        facts["erasing"] = str(erasing).lower() != "false"  # false: the no-erasing control
    facts["precision"] = {  # Lightning's default is 32-true
        stage: str(setting(stage, "trainer.precision") or "32-true")
        for stage in config.stages
        if STAGES[stage].command[0] in LIGHTNING_STAGES
    }
    return facts


def wandb_context(config: Any, facts: dict[str, Any]) -> dict[str, Any]:
    """Pipeline-level facts every stage's W&B run carries (group, tags, config) for comparisons in the UI."""
    tags = [f"dataset:{config.dataset}", f"seed:{config.seed}", *config.tags]
    if facts.get("masking_depth") is not None:
        tags.append(f"masking_depth:{facts['masking_depth']}")
    if facts.get("erasing") is False:
        tags.append("no_erasing_control")
    tags += [f"{k}:{facts[k]}" for k in ("classifier_backbone", "cgnet_backbone") if facts.get(k)]
    return {"group": config.name, "tags": tags, "config": facts}


def versions() -> dict[str, str]:
    """Python's and the main packages' versions; caef's from the code that ran (an editable install's metadata keeps
    the version it was installed at)."""
    from importlib.metadata import PackageNotFoundError, version

    from caef import __version__

    out = {"python": sys.version.split()[0], "caef": __version__}
    for package in ("torch", "torchvision", "lightning", "torchmetrics", "wandb", "albumentations"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    return out
