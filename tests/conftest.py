"""Shared fixtures: W&B sandboxed per test, one thread per xdist worker, a small generated dataset per session."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

# before anything imports albumentations: no PyPI version check (network, 2 s timeout) during collection
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytest
import torch

from caef.data.synthetic import SynthConfig, generate

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs 2 workers on 2 cores: intra-op threads per worker would oversubscribe them
    torch.set_num_threads(1)

#: recipe of the session's generated dataset (tests that need the same tree reuse this config)
TINY_SYNTH = SynthConfig(num_images=48, size=64, seed=0, num_classes=3)


@pytest.fixture(autouse=True)
def _sandbox_wandb(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test needs a W&B login or writes W&B files into the repository or the home folder, and no test's W&B run
    outlives it.

    The folders live in their own temporary directory, so each test's ``tmp_path`` stays empty.
    """
    base = tmp_path_factory.mktemp("wandb")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var, sub in (
        ("WANDB_DIR", "dir"),
        ("WANDB_CONFIG_DIR", "config"),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_DATA_DIR", "data"),
    ):
        (base / sub).mkdir()
        monkeypatch.setenv(var, str(base / sub))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:  # a run a test left open would swallow the next test's logger
        wandb.finish()


@pytest.fixture(scope="session")
def tiny_synth_config() -> SynthConfig:
    return TINY_SYNTH


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a small generated VOC-layout tree (the folder passed to ``generate``), made once per session.

    Treat it as read-only: it is shared by every test of the session (caef may add its label cache inside).
    """
    root = tmp_path_factory.mktemp("tiny_synth") / "tree"
    generate(root, TINY_SYNTH, progress=False)
    return root
