"""Distributed evaluation sampling: every image goes to exactly one rank, none is repeated to even out the ranks.

Lightning's own ``DistributedSampler`` pads uneven shards with repeated samples, which would count those images
twice in a CAM mIoU and export their files twice; the inference loaders' ``SizeBucketBatchSampler`` shards by
rank without padding, also when Lightning rebuilds it with its distributed sampler (its default
``use_distributed_sampler=True``), as it does for validation, testing and prediction under DDP.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from lightning.fabric.utilities.data import _replace_dunder_methods
from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, SequentialSampler

from caef.data.datamodule import ClassificationDataModule
from caef.data.datasets import SizeBucketBatchSampler, shard_indices
from caef.data.synthetic import SynthConfig
from caef.errors import DataError

#: an odd number of items in three sizes: no world size of 2 or 3 divides it, so a padding sampler would repeat
SIZES = [(40, 56), (48, 40), (40, 56), (33, 33), (40, 56), (48, 40), (40, 56), (40, 56), (48, 40), (33, 33), (40, 56)]


def flat(batches) -> list[int]:
    return [i for batch in batches for i in batch]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_shards_cover_the_dataset_exactly_once(world_size: int) -> None:
    shards = [SizeBucketBatchSampler(SIZES, batch_size=2, num_replicas=world_size, rank=r) for r in range(world_size)]
    indices = [flat(shard) for shard in shards]
    assert Counter(i for shard in indices for i in shard) == Counter(range(len(SIZES)))  # union, no repeats
    assert max(map(len, indices)) - min(map(len, indices)) <= 1
    assert [sorted(shard) for shard in indices] == [
        shard_indices(range(len(SIZES)), world_size, r) for r in range(world_size)
    ]
    for shard in shards:
        assert len(shard) == len(list(shard))
        assert all(1 <= len(batch) <= 2 and len({SIZES[i] for i in batch}) == 1 for batch in shard)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_lightning_injected_distributed_sampler_is_not_padded(world_size: int) -> None:
    """With ``use_distributed_sampler=True`` Lightning passes a padding ``DistributedSampler``: only its rank and
    world size are taken; any other sampler (the sequential one it passes when predicting) is ignored."""
    seen = []
    for rank in range(world_size):
        padded = DistributedSampler(range(len(SIZES)), num_replicas=world_size, rank=rank, shuffle=False)
        assert world_size == 1 or len(list(padded)) * world_size > len(SIZES)  # Lightning's would repeat some
        seen += flat(SizeBucketBatchSampler(SIZES, batch_size=4, sampler=padded))
        own = SizeBucketBatchSampler(SIZES, 4, num_replicas=world_size, rank=rank)
        ignored = SizeBucketBatchSampler(SIZES, 4, num_replicas=world_size, rank=rank, sampler=SequentialSampler(SIZES))
        assert list(ignored) == list(own)
    assert Counter(seen) == Counter(range(len(SIZES)))


def test_subset_indices_are_sharded() -> None:
    indices = [1, 2, 3, 5, 8]
    shards = [flat(SizeBucketBatchSampler(SIZES, 3, indices=indices, num_replicas=2, rank=r)) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == indices and not set(shards[0]) & set(shards[1])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rank must be in"):
        shard_indices(range(5), num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="drop_last must be False"):
        SizeBucketBatchSampler(SIZES, 2, drop_last=True)


# -- the datamodule's loaders as Lightning prepares them under DDP ---------------------------------
def datamodule(root: Path, synth: SynthConfig, world_size: int, rank: int) -> ClassificationDataModule:
    dm = ClassificationDataModule(
        dataset="synthetic", root=str(root), synth=synth, eval_batch_size=4, num_workers=0, crop_size=48
    )
    dm.trainer = SimpleNamespace(world_size=world_size, global_rank=rank)  # what the loaders read of the trainer
    dm.predict_split = dm.score_split  # 11 images: divides by neither 2 nor 3
    return dm


def lightning_loader(dm: ClassificationDataModule, hook: str, mode: RunningStage) -> DataLoader:
    """The loader as Lightning's DDP data connector hands it to its loops (``use_distributed_sampler=True``)."""
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = getattr(dm, hook)()  # as Lightning calls the hooks: records the arguments to rebuild them
    world_size, rank = dm.trainer.world_size, dm.trainer.global_rank
    sampler = _get_distributed_sampler(loader, False, 0, mode=mode, num_replicas=world_size, rank=rank)
    return _update_dataloader(loader, sampler, mode=mode)


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize(
    "hook, mode",
    [("val_dataloader", RunningStage.VALIDATING), ("predict_dataloader", RunningStage.PREDICTING)],
)
def test_each_image_is_evaluated_by_exactly_one_rank(
    tiny_synth: Path, tiny_synth_config: SynthConfig, world_size: int, hook: str, mode: RunningStage
) -> None:
    ids = []
    for rank in range(world_size):
        loader = lightning_loader(datamodule(tiny_synth, tiny_synth_config, world_size, rank), hook, mode)
        ids += [loader.dataset.ids[i] for i in flat(loader.batch_sampler)]
    expected = datamodule(tiny_synth, tiny_synth_config, 1, 0).source.split_ids("train")
    assert world_size == 1 or len(expected) % world_size  # the split does not divide evenly: padding would repeat
    assert Counter(ids) == Counter(expected)


def test_fewer_images_than_processes_is_a_clear_error(tiny_synth: Path, tiny_synth_config: SynthConfig) -> None:
    dm = datamodule(tiny_synth, tiny_synth_config, world_size=4, rank=0)
    dm.score_limit = 3
    with pytest.raises(DataError, match="fewer than the 4 processes"):
        dm.val_dataloader()
