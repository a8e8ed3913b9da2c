"""Epoch-seeded order, sharding and resume: the shared function and the torch back end (fast, CPU).

The FFCV and DALI wiring of the same order is tested in tests/test_loaders.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import make_loader
from pipeline.loaders import base


# ------------------------------------------------------------------------------------------------
# The shared order function
# ------------------------------------------------------------------------------------------------

def test_same_seed_and_epoch_give_same_order_and_epochs_differ():
    a = base.epoch_order(1000, seed=3, epoch=5, shuffle=True)
    b = base.epoch_order(1000, seed=3, epoch=5, shuffle=True)
    assert np.array_equal(a, b)
    assert sorted(a.tolist()) == list(range(1000))
    assert not np.array_equal(a, base.epoch_order(1000, seed=3, epoch=6, shuffle=True))
    assert not np.array_equal(a, base.epoch_order(1000, seed=4, epoch=5, shuffle=True))
    assert np.array_equal(base.epoch_order(10, seed=3, epoch=5, shuffle=False), np.arange(10))


@pytest.mark.parametrize("n,ws,bs", [(103, 4, 8), (100, 3, 7), (5, 8, 2), (64, 1, 16)])
def test_eval_sharding_sees_every_sample_exactly_once(n, ws, bs):
    parts = [base.epoch_order(n, seed=1, epoch=2, shuffle=True, rank=r, world_size=ws, batch_size=bs,
                              drop_last=False) for r in range(ws)]
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(n))
    lens = [base.num_batches(n, r, ws, bs, False) for r in range(ws)]
    assert max(lens) - min(lens) <= 1
    assert [int(np.ceil(len(p) / bs)) for p in parts] == lens


@pytest.mark.parametrize("n,ws,bs", [(103, 4, 8), (100, 3, 7), (64, 2, 16)])
def test_train_sharding_equal_lengths_whole_batches_no_duplicates(n, ws, bs):
    parts = [base.epoch_order(n, seed=1, epoch=0, shuffle=True, rank=r, world_size=ws, batch_size=bs,
                              drop_last=True) for r in range(ws)]
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) % bs == 0
    assert len(parts[0]) == (n // ws) // bs * bs
    allidx = np.concatenate(parts)
    assert len(set(allidx.tolist())) == len(allidx)
    # the dropped samples change with the epoch
    other = np.concatenate([base.epoch_order(n, seed=1, epoch=1, shuffle=True, rank=r, world_size=ws,
                                             batch_size=bs, drop_last=True) for r in range(ws)])
    assert set(allidx.tolist()) != set(other.tolist()) or len(allidx) == n


def test_start_batch_is_the_tail_of_the_full_epoch():
    full = base.epoch_order(100, seed=0, epoch=7, shuffle=True, rank=1, world_size=2, batch_size=8,
                            drop_last=True)
    for k in (0, 1, 3, 6):
        tail = base.epoch_order(100, seed=0, epoch=7, shuffle=True, rank=1, world_size=2, batch_size=8,
                                drop_last=True, start_batch=k)
        assert np.array_equal(tail, full[k * 8:])


def test_bad_shard_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="rank"):
        base.epoch_order(10, seed=0, epoch=0, shuffle=True, rank=2, world_size=2)
    with pytest.raises(ValueError, match="start_batch"):
        base.epoch_order(10, seed=0, epoch=0, shuffle=True, start_batch=-1)


# ------------------------------------------------------------------------------------------------
# torch back end: the reference for bit-exact resume
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes x 9 small JPEGs with distinct content (plus one grayscale JPEG)."""
    root = tmp_path_factory.mktemp("order_imgs")
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"c{c}").mkdir()
        for i in range(9):
            arr = rng.integers(0, 256, (40 + 4 * i, 48, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / f"c{c}" / f"{i:02d}.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8), "L").save(root / "c0" / "gray.jpg")
    return root


def _epoch(loader, epoch, start_batch=0):
    loader.set_epoch(epoch, start_batch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_torch_same_output_for_0_and_2_workers_and_two_instances(folder):
    kw = dict(batch_size=5, image_size=24, train=True, seed=11)
    a = _epoch(make_loader("torch", folder, num_workers=0, **kw), 3)
    b = _epoch(make_loader("torch", folder, num_workers=2, **kw), 3)
    assert len(a) == len(b) == 28 // 5
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_torch_resume_mid_epoch_yields_exactly_the_tail(folder):
    loader = make_loader("torch", folder, batch_size=4, image_size=24, train=True, num_workers=0, seed=5)
    full = _epoch(loader, 2)
    assert len(full) == len(loader) == 7
    tail = _epoch(loader, 2, start_batch=3)
    assert len(tail) == 4
    for (xf, yf), (xt, yt) in zip(full[3:], tail):
        assert torch.equal(xf, xt) and torch.equal(yf, yt)
    # start_batch applies once: the next pass is a whole epoch again
    assert len([1 for _ in loader]) == 7
    other = _epoch(loader, 3)
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(full, other))


def test_torch_sharded_loaders_cover_the_split_once(folder):
    seen = []
    for rank in range(3):
        loader = make_loader("torch", folder, batch_size=4, image_size=16, train=False, num_workers=0,
                             rank=rank, world_size=3, shuffle=True)
        loader.set_epoch(1)
        order = base.epoch_order(loader.num_samples, seed=0, epoch=1, shuffle=True, rank=rank,
                                 world_size=3, batch_size=4, drop_last=False)
        labels = torch.cat([y for _, y in loader])
        assert labels.tolist() == [loader.labels[i] for i in order]
        seen += order.tolist()
    assert sorted(seen) == list(range(28))


def test_torch_batched_decode_matches_pil_path(folder):
    """decode='batched' (nvJPEG on CUDA; libjpeg-turbo here) draws the same crops as the PIL path."""
    kw = dict(batch_size=7, image_size=24, train=True, num_workers=0, seed=2)
    a = _epoch(make_loader("torch", folder, **kw), 0)
    b = _epoch(make_loader("torch", folder, decode="batched", **kw), 0)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb)
        # same box and flip; only the resize kernels differ (PIL vs tensor bicubic): small error.
        # The images are uniform noise, the worst case for resampling differences.
        assert (xa - xb).abs().mean() < 0.25


def test_set_epoch_rejects_start_batch_past_the_end(folder):
    loader = make_loader("torch", folder, batch_size=4, image_size=16, num_workers=0)
    with pytest.raises(ValueError, match="start_batch"):
        loader.set_epoch(0, start_batch=len(loader) + 1)
    loader.set_epoch(0, start_batch=len(loader))
    assert list(loader) == []
