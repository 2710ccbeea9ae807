"""Reading checkpoints: one place that opens a torch file and checks a state dict against a network.

Below models and stages (it imports neither), so a network can load its own weights without reaching up into the
stage that trains it. Every problem is a one-line :class:`CaefError` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from caef.errors import CaefError


def read_checkpoint(path: str | Path, what: str, hint: str) -> Any:
    """The object in the torch file ``path`` (on the CPU). ``what`` names it in errors (e.g. "CGNet checkpoint"),
    ``hint`` says how to get a good one."""
    path = Path(path)
    if not path.is_file():
        raise CaefError(f"{what} not found: {path}; {hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated zip, not a torch file, pickle errors ...
        detail = (str(exc).strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")  # torch's first sentence
        raise CaefError(
            f"cannot read {what} {path} ({type(exc).__name__}: {detail}): the file is truncated or not a torch "
            f"checkpoint; {hint}"
        ) from exc


def read_lightning_checkpoint(path: str | Path, what: str, hint: str) -> dict[str, Any]:
    """A Lightning checkpoint: a dict with ``hyper_parameters`` and ``state_dict`` (else a CaefError)."""
    checkpoint = read_checkpoint(path, what, hint)
    if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict)):
        raise CaefError(f"{what} {path} is not a Lightning checkpoint (no state_dict); {hint}")
    checkpoint.setdefault("hyper_parameters", {})
    return checkpoint


def check_state_dict(net: nn.Module, state: dict[str, Tensor], path: Path, what: str) -> None:
    """Raise a short CaefError (counts and first keys, not hundreds of names) if ``state`` does not fit ``net``."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = [
        f"{len(items)} {label} (e.g. {', '.join(items[:3])})"
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if items
    ]
    if problems:
        hint = "Check the backbone name and options (e.g. width) it was trained with."
        if "CGNet init" in what:
            hint = (
                "init_from_ordinary_classifier needs the CGNet's architecture (model.backbone, "
                "model.backbone_options) to equal the classifier's: make them equal, or set "
                "model.init_from_ordinary_classifier=false."
            )
        elif what == "ordinary classifier":
            hint = (
                "For a plain state dict (.pth), set model.ordinary_classifier_backbone and "
                "model.ordinary_classifier_options (e.g. width) to the architecture it was trained with."
            )
        head = [k for k in ("classifier.weight", "net.classifier.weight") if k in state and k in expected]
        if head and tuple(state[head[0]].shape[1:]) == tuple(expected[head[0]].shape[1:]):
            found, wanted = len(state[head[0]]), len(expected[head[0]])
            if found != wanted:
                hint = (
                    f"It predicts {found} foreground classes but {wanted} are configured: use one trained on this "
                    "dataset (num_classes comes from the data)."
                )
        raise CaefError(f"{what} {path} does not match the configured architecture: {'; '.join(problems)}. {hint}")
