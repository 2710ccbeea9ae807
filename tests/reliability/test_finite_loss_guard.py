"""FiniteLossGuard: a NaN/inf loss (or gradient) stops the stage with a CaefError naming it and the step, before
that step touches the weights, so no checkpoint ever holds the diverged weights."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import make_voc_tree
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from reliability_helpers import assert_actionable, caef_error_line, run_caef, tiny_classifier_args
from torch.utils.data import DataLoader, TensorDataset

from caef.callbacks import FiniteLossGuard
from caef.callbacks.finite_loss import NonFiniteLossError
from caef.errors import CaefError


class TinyModule(pl.LightningModule):
    """Linear regression whose loss is replaced by ``bad_value`` at batch ``bad_step`` (or its gradient by NaN)."""

    def __init__(self, bad_step: int | None = None, bad_value: float = math.nan, bad_gradient: bool = False):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.bad_step, self.bad_value, self.bad_gradient = bad_step, bad_value, bad_gradient

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        if batch_idx == self.bad_step:
            if self.bad_gradient:  # finite loss, NaN gradient
                self.layer.weight.register_hook(lambda grad: torch.full_like(grad, math.nan))
            else:  # a product, so that the gradients are non-finite too (as when a network diverges)
                loss = loss * self.bad_value
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class WeightHistory(Callback):
    """The weights after every completed step, keyed by global step."""

    def __init__(self):
        self.after: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after[trainer.global_step] = {k: v.clone() for k, v in pl_module.state_dict().items()}


def loader(batches: int = 8) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batches * 2, 4, generator=gen)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=2)


def fit(tmp_path: Path, module: TinyModule, callbacks: list, max_steps: int = 8) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=max_steps, callbacks=callbacks, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, loader())
    return trainer


def every_step_checkpoint(tmp_path: Path, **kwargs) -> ModelCheckpoint:
    return ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, every_n_train_steps=1, **kwargs)


def saved(path: Path) -> tuple[int, dict[str, torch.Tensor]]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return checkpoint["global_step"], checkpoint["state_dict"]


@pytest.mark.parametrize("bad_value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("guard_first", [True, False], ids=["guard-first", "guard-last"])
def test_stops_at_the_bad_step_and_keeps_the_last_good_checkpoint(tmp_path, bad_value, guard_first):
    checkpoint, history, guard = every_step_checkpoint(tmp_path), WeightHistory(), FiniteLossGuard(stage="tiny")
    callbacks = [guard, history, checkpoint] if guard_first else [checkpoint, history, guard]
    with pytest.raises(NonFiniteLossError) as err:
        fit(tmp_path, TinyModule(bad_step=3, bad_value=bad_value), callbacks)
    message = assert_actionable(str(err.value), "stage 'tiny' (TinyModule)", "global step 3", "model.lr")
    assert f"non-finite training loss ({bad_value})" in message and str(tmp_path / "ckpt" / "last.ckpt") in message
    assert isinstance(err.value, CaefError)
    step, state = saved(tmp_path / "ckpt" / "last.ckpt")
    assert step == 3  # written after step 3 (batches 0..2), never after the bad batch 3
    for key, value in state.items():
        assert torch.isfinite(value).all() and torch.equal(value, history.after[3][key]), key
    assert sorted(history.after) == [1, 2, 3]


def test_save_on_exception_still_saves_only_good_weights(tmp_path):
    """ModelCheckpoint(save_on_exception=True) writes a checkpoint when the guard raises: it must hold the weights
    from before the bad step, which it does because the guard raises before the backward pass."""
    checkpoint = every_step_checkpoint(tmp_path, save_on_exception=True)
    history = WeightHistory()
    with pytest.raises(NonFiniteLossError):
        fit(tmp_path, TinyModule(bad_step=5), [FiniteLossGuard(), history, checkpoint])
    for path in (tmp_path / "ckpt").glob("*.ckpt"):
        step, state = saved(path)
        assert step == 5
        for key, value in state.items():
            assert torch.isfinite(value).all() and torch.equal(value, history.after[5][key]), (path.name, key)


def test_without_the_guard_nan_weights_reach_the_checkpoint(tmp_path):
    """The control: Lightning alone trains on and checkpoints the NaN weights (what the guard prevents)."""
    fit(tmp_path, TinyModule(bad_step=3), [every_step_checkpoint(tmp_path)], max_steps=5)
    step, state = saved(tmp_path / "ckpt" / "last.ckpt")
    assert step == 5 and not torch.isfinite(state["layer.weight"]).all()


def test_nan_at_the_first_step_leaves_no_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"stage TinyModule at global step 0 \(epoch 0, batch 0\)") as err:
        fit(tmp_path, TinyModule(bad_step=0), [FiniteLossGuard(), every_step_checkpoint(tmp_path)])
    assert "(last:" not in str(err.value)
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())


def test_non_finite_gradient_from_a_finite_loss(tmp_path):
    history = WeightHistory()
    with pytest.raises(NonFiniteLossError) as err:
        fit(tmp_path, TinyModule(bad_step=2, bad_gradient=True), [FiniteLossGuard("tiny"), history])
    assert_actionable(str(err.value), "non-finite gradient", "layer.weight", "stage 'tiny'", "global step 2")
    assert sorted(history.after) == [1, 2]
    # without the gradient check the NaN gradient reaches the weights, and only the next loss stops the stage
    module = TinyModule(bad_step=2, bad_gradient=True)
    with pytest.raises(NonFiniteLossError, match="non-finite training loss .* at global step 3"):
        fit(tmp_path, module, [FiniteLossGuard(check_gradients=False)])
    assert not torch.isfinite(module.layer.weight).all()


def test_finite_training_is_untouched(tmp_path):
    reference, guarded = TinyModule(), TinyModule()
    guarded.load_state_dict(reference.state_dict())
    fit(tmp_path / "a", reference, [])
    fit(tmp_path / "b", guarded, [FiniteLossGuard()])
    for (key, a), b in zip(reference.state_dict().items(), guarded.state_dict().values()):
        assert torch.equal(a, b), key


def test_through_the_cli(tmp_path, capsys, monkeypatch):
    """``caef classifier fit`` with the guard: exit code 2, one line naming the stage and the step."""
    from caef.stages.classifier import ClassifierModule

    original = ClassifierModule.training_step

    def diverging(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * math.nan if batch_idx == 1 else loss

    monkeypatch.setattr(ClassifierModule, "training_step", diverging)
    tree = make_voc_tree(tmp_path / "data")
    args = tiny_classifier_args(
        tree["root"], "--trainer.callbacks+=caef.callbacks.FiniteLossGuard", "--trainer.callbacks.stage=classifier"
    )
    code, _, err = run_caef([*args, f"--run_dir={tmp_path / 'run'}"], capsys)
    line = caef_error_line(code, err)
    assert_actionable(line, "non-finite training loss (nan)", "stage 'classifier' (ClassifierModule)", "global step 1")
    assert not (tmp_path / "run" / "classifier" / "last.ckpt").exists()
