"""RNG states travel with checkpoints, in a form `torch.load(weights_only=True)` accepts."""

import io
import random

import numpy as np
import torch

from caef.callbacks.rng_state import KEY, RNGStateCheckpoint


def test_saved_states_load_with_weights_only_and_restore_every_generator():
    callback, checkpoint = RNGStateCheckpoint(), {}
    callback.on_save_checkpoint(None, None, checkpoint)
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)  # what LightningCLI does with --ckpt_path
    assert KEY in loaded
    torch.rand(5), np.random.rand(5), random.random()  # move every generator on
    callback.on_load_checkpoint(None, None, loaded)
    torch.testing.assert_close(torch.rand(3), expected[0])
    np.testing.assert_array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


def test_checkpoints_without_states_load_unchanged():
    state = torch.random.get_rng_state()
    RNGStateCheckpoint().on_load_checkpoint(None, None, {})
    assert torch.equal(torch.random.get_rng_state(), state)
