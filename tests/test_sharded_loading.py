"""Data-parallel loading: each rank reads its part of every global batch, augmented as one process would."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from zoo.data.augment import AugmentConfig, augment_batch
from zoo.data.loader import ShardedBatchSampler, make_loader, shard_bounds


@pytest.mark.parametrize(("size", "batch", "world"), [(10, 4, 2), (11, 4, 3), (7, 3, 3), (8, 8, 1)])
def test_ranks_together_read_the_batches_of_one_process(size: int, batch: int, world: int) -> None:
    one = list(ShardedBatchSampler(size, batch, shuffle=True, seed=5))  # world_size 1
    order = torch.randperm(size, generator=torch.Generator().manual_seed(5)).tolist()
    assert one == [order[i : i + batch] for i in range(0, size, batch)]
    parts = [
        list(ShardedBatchSampler(size, batch, rank=r, world_size=world, shuffle=True, seed=5))
        for r in range(world)
    ]
    assert all(len(p) == len(one) for p in parts)
    for i, whole in enumerate(one):
        assert [j for p in parts for j in p[i]] == whole  # contiguous parts, rank order
        seen = 0
        for r in range(world):
            sampler = ShardedBatchSampler(size, batch, rank=r, world_size=world, shuffle=True, seed=5)
            assert sampler.part(i) == (seen, len(whole))
            seen += len(parts[r][i])
    reads = sorted(j for p in parts for b in p for j in b)
    assert reads == list(range(size))  # every sample once per epoch, no rank reads another's


def test_the_order_does_not_depend_on_how_the_loader_is_iterated() -> None:
    # tqdm.auto takes an iterator of the loader before iterating it again: with DataLoader's own
    # shuffling that draws one more seed from the loader's generator and changes the order
    data = TensorDataset(torch.arange(12))
    plain = [
        b[0].tolist()
        for b in make_loader(data, batch_size=4, shuffle=True, in_memory=True, seed=1, shard=(0, 1))
    ]
    loader = make_loader(data, batch_size=4, shuffle=True, in_memory=True, seed=1, shard=(0, 1))
    wrapped = [b[0].tolist() for b in tqdm(loader, disable=True)]
    assert wrapped == plain
    assert list(ShardedBatchSampler(5, 2, shuffle=False)) == [[0, 1], [2, 3], [4]]


def test_shard_bounds_follow_tensor_split() -> None:
    for size in range(0, 9):
        for world in (1, 2, 3, 4):
            pieces = torch.tensor_split(torch.arange(size), world)
            for rank in range(world):
                start, stop = shard_bounds(size, rank, world)
                assert torch.arange(size)[start:stop].tolist() == pieces[rank].tolist()


def test_sampler_refuses_bad_ranks_and_batches_smaller_than_the_world() -> None:
    with pytest.raises(ValueError, match=r"rank 2 is not in 0\.\.1"):
        ShardedBatchSampler(8, 4, rank=2, world_size=2, shuffle=False)
    with pytest.raises(ValueError, match="global batch of 2 cannot give each of 3 ranks"):
        ShardedBatchSampler(8, 2, rank=0, world_size=3, shuffle=False)


def test_sharded_loader_yields_this_ranks_samples() -> None:
    data = TensorDataset(torch.arange(10).float().view(10, 1))
    loader = make_loader(data, batch_size=4, shuffle=True, in_memory=True, seed=3, shard=(1, 2))
    full = make_loader(data, batch_size=4, shuffle=True, in_memory=True, seed=3, shard=(0, 1))
    got = [b[0].view(-1).tolist() for b in loader]
    want = [
        b[0].view(-1)[shard_bounds(len(b[0]), 1, 2)[0] : shard_bounds(len(b[0]), 1, 2)[1]].tolist()
        for b in full
    ]
    assert got == want and isinstance(loader.batch_sampler, ShardedBatchSampler)


def test_a_rank_augments_its_rows_as_the_whole_batch_would() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(5, 1, 48, 40, generator=gen)
    masks = (torch.rand(5, 48, 40, generator=gen) > 0.5).long()
    weights = torch.rand(5, 48, 40, generator=gen)
    cfg = AugmentConfig()  # rotation, scale, flips, shift, elastic, gray values: every random draw
    whole = augment_batch(images, masks, weights, config=cfg, generator=torch.Generator().manual_seed(9))
    for start, stop in ((0, 3), (3, 5), (1, 2)):
        part = augment_batch(
            images[start:stop],
            masks[start:stop],
            weights[start:stop],
            config=cfg,
            generator=torch.Generator().manual_seed(9),
            part=(start, 5),
        )
        for ours, ref in zip(part, whole, strict=True):
            assert ours is not None and ref is not None
            torch.testing.assert_close(ours, ref[start:stop], rtol=0, atol=1e-6)


def test_a_part_outside_its_batch_is_refused() -> None:
    with pytest.raises(ValueError, match=r"part=\(3, 4\): rows 3..4 do not lie in a batch of 4"):
        augment_batch(torch.rand(2, 1, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long), part=(3, 4))


def test_part_of_a_batch_past_the_epoch_is_an_error() -> None:
    sampler = ShardedBatchSampler(10, 4, rank=1, world_size=2, shuffle=False)
    assert sampler.part(2) == (1, 2)
    with pytest.raises(IndexError, match="global batch 3 out of range: an epoch has 3"):
        sampler.part(3)


def test_set_epoch_reshuffles_a_reused_sampler_the_same_way_on_every_rank() -> None:
    samplers = [ShardedBatchSampler(12, 4, rank=r, world_size=2, shuffle=True, seed=3) for r in range(2)]
    first = [list(s) for s in samplers]
    assert [list(s) for s in samplers] == first  # no set_epoch: the same order again
    for s in samplers:
        s.set_epoch(1)
    second = [list(s) for s in samplers]
    assert second != first
    # the ranks still cut the same global batches, now in the order of seed + epoch
    expected = torch.randperm(12, generator=torch.Generator().manual_seed(4)).tolist()
    assert [second[0][i] + second[1][i] for i in range(3)] == [expected[i : i + 4] for i in range(0, 12, 4)]
    with pytest.raises(ValueError, match="epoch -1 is negative"):
        samplers[0].set_epoch(-1)
