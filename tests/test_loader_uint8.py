"""uint8 batches as the libraries produce them, normalised once on the consumer (issue 11).

For each back end on real files: ``make_loader(..., dtype=torch.uint8)`` yields uint8
N x 3 x S x S pixels (not normalised values cast to uint8), FFCV's without a copy or layout pass,
and :func:`pipeline.to_model_input` of them equals the normalised batches the loaders produced
before (FFCV/torch: the torch formula; DALI: its own ``crop_mirror_normalize``) within 1e-6.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import IMAGENET_MEAN, IMAGENET_STD, make_loader, to_model_input
from pipeline.loaders import base

MEAN255 = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
INV_STD255 = 1.0 / (torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255)


def old_normalise(x: torch.Tensor) -> torch.Tensor:
    """The loaders' normalisation before this change (transforms.finish_batch), as a reference."""
    return x.float().sub_(MEAN255).mul_(INV_STD255).contiguous()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from pipeline.build_ffcv import build
    from pipeline.sample import make_sample_dataset
    root = tmp_path_factory.mktemp("uint8")
    make_sample_dataset(root / "src", image_size=80, train_per_class=2, val_per_class=2,
                        num_workers=1, progress=False)
    build(root / "src", root / "ffcv", num_workers=1, progress=False, log=lambda *a, **k: None)
    return root


def path_for(backend, root: Path, split="val"):
    return root / "ffcv" / f"{split}.beton" if backend == "ffcv" else root / "src" / split


def first_batch(backend, root, **kw):
    loader = make_loader(backend, path_for(backend, root), batch_size=8, image_size=64, train=False,
                         num_workers=1, **kw)
    loader.set_epoch(0)
    x, y = next(iter(loader))
    return loader, x, y


@pytest.mark.parametrize("backend", ["torch", "ffcv", "dali"])
def test_uint8_batches_are_pixels_and_normalise_like_before(backend, data):
    _, x8, y8 = first_batch(backend, data, dtype=torch.uint8)
    _, xf, yf = first_batch(backend, data, dtype=torch.float32)
    assert x8.dtype == torch.uint8 and tuple(x8.shape) == (8, 3, 64, 64)
    assert y8.dtype == torch.int64 and torch.equal(y8, yf)
    # pixels, not normalised values cast to uint8 (the old dtype=uint8 gave values 0..2 and 253..255)
    assert x8.float().std() > 20 and 60 < x8.float().mean() < 200
    unnormalised = (xf * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) * 255
    assert (unnormalised - x8.float()).abs().max() < 1e-3
    mine = to_model_input(x8, "cpu")
    assert mine.dtype == torch.float32 and mine.is_contiguous()
    assert (mine - xf).abs().max() <= 1e-6           # the float loader path: the same numbers
    if backend != "dali":
        assert (mine - old_normalise(x8)).abs().max() <= 1e-6
    ref = (x8.double() / 255 - torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)) \
        / torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    assert (mine.double() - ref).abs().max() <= 1e-6


@pytest.mark.parametrize("train", [False, True])
def test_dali_consumer_normalisation_equals_dali_crop_mirror_normalize(data, train):
    """Today's DALI float batches (mean/std inside crop_mirror_normalize) against uint8 + to_model_input,
    from two pipelines with the same seed and files, so the same crops and flips."""
    from pipeline.loaders.dali_loader import _dali_pipeline, _EpochFiles, _to_torch
    loader = make_loader("dali", path_for("dali", data), batch_size=8, image_size=64, train=train,
                         num_workers=1, dtype=torch.uint8, shuffle=False, drop_last=False)
    order = base.epoch_order(loader.num_samples, seed=0, epoch=0, shuffle=False)
    outs = {}
    for normalize in (False, True):
        pipe = _dali_pipeline(_EpochFiles(loader.read_paths[order], loader.labels[order], 8), batch_size=8,
                              image_size=64, train=train, num_threads=1, device_id=None, seed=1234,
                              decoder_device="cpu", prefetch=2, normalize=normalize)
        pipe.build()
        outs[normalize] = _to_torch(pipe.run()[0], torch.device("cpu"))
        del pipe
    assert outs[False].dtype == torch.uint8 and outs[True].dtype == torch.float32
    assert (to_model_input(outs[False]) - outs[True]).abs().max() <= 1e-6


def test_ffcv_uint8_is_ffcvs_own_batch_without_a_layout_pass(data):
    """The project's FFCV uint8 batch is FFCV's batch in FFCV's channels-last memory: no NCHW
    .contiguous() pass and no normalisation on the loader side (what made it 0.2-0.5x bare FFCV)."""
    loader, x, _ = first_batch("ffcv", data, dtype=torch.uint8)
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    # the next batch lands in another of FFCV's buffer slots; a batch is valid until it is drawn
    loader.set_epoch(0)
    ptrs = [b.data_ptr() for b, _ in loader]
    assert len(set(ptrs)) == len(ptrs)


def test_to_model_input_dtype_layout_passthrough_and_errors():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    cl = to_model_input(x.contiguous(memory_format=torch.channels_last), "cpu")
    assert cl.is_contiguous() and torch.equal(cl, to_model_input(x))
    out = to_model_input(x, "cpu", channels_last=True, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    assert (out.float() - old_normalise(x)).abs().max() < 0.02       # bf16 rounding of the same values
    y = to_model_input(x)
    assert y.data_ptr() != x.data_ptr()
    assert torch.equal(to_model_input(y), y)                          # already normalised: unchanged
    with pytest.raises(TypeError, match="uint8 or floating"):
        to_model_input(x.int())


def test_make_loader_accepts_dtype_names(data):
    loader = make_loader("torch", path_for("torch", data), batch_size=4, image_size=64, train=False,
                         num_workers=0, dtype="uint8")
    assert next(iter(loader))[0].dtype == torch.uint8
    assert np.isclose(float(to_model_input(next(iter(loader))[0]).mean()), 0, atol=2.5)


def test_ffcv_buffers_reused_across_epochs_and_an_abandoned_epoch_does_not_corrupt_the_next(data):
    """FFCV's batch memory is allocated once (not every epoch); leaving an epoch early stops
    FFCV's thread before the next epoch writes the same slots. Eval mode (deterministic crops),
    shuffled: every epoch's batches differ, and must equal a loader that allocates per epoch."""
    beton = path_for("ffcv", data)
    kw = dict(batch_size=4, image_size=64, train=False, num_workers=1, dtype=torch.uint8, shuffle=True)
    fresh = make_loader("ffcv", beton, reuse_memory=False, **kw)
    reused = make_loader("ffcv", beton, **kw)
    for epoch in range(4):
        fresh.set_epoch(epoch)
        want = [(x.clone(), y.clone()) for x, y in fresh]
        reused.set_epoch(epoch)
        if epoch == 1:  # leave after one batch, while FFCV is still decoding the next ones
            for _ in reused:
                break
            continue
        got = [(x.clone(), y.clone()) for x, y in reused]
        assert len(got) == len(want) == 5
        assert all(torch.equal(a, b) and torch.equal(la, lb) for (a, la), (b, lb) in zip(got, want)), epoch
    allocations = []
    for _ in range(2):
        it = iter(reused._ffcv)
        allocations.append(it.memory_allocations)
        list(it)
    assert allocations[0] is allocations[1]


@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_in_place_flip_matches_a_mirror(prob):
    """The FFCV flip op that replaced FFCV's copying RandomHorizontalFlip: same pixels, in place."""
    from ffcv.pipeline.compiler import Compiler
    from pipeline.loaders.ffcv_loader import in_place_flip
    flip = Compiler.compile(in_place_flip(prob).generate_code())
    x = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    want = x[:, :, ::-1].copy() if prob else x.copy()
    out = flip(x, None)
    assert np.shares_memory(out, x) and np.array_equal(out, want)


def test_ffcv_train_crops_are_mirrored_about_half_the_time(tmp_path):
    """Train mode on images whose red channel grows left to right: a mirrored crop's red falls."""
    from PIL import Image
    from pipeline.build_ffcv import build
    x = np.linspace(0, 255, 160)[None, :].repeat(120, 0)
    img = np.stack([x, np.full_like(x, 60), np.full_like(x, 128)], -1).round().astype(np.uint8)
    for c in ("a", "b"):
        (tmp_path / "src" / "train" / c).mkdir(parents=True)
        for i in range(24):
            Image.fromarray(img).save(tmp_path / "src" / "train" / c / f"{i}.jpg", quality=95)
    build(tmp_path / "src", tmp_path / "ffcv", num_workers=1, progress=False, log=lambda *a, **k: None)
    loader = make_loader("ffcv", tmp_path / "ffcv" / "train.beton", batch_size=48, image_size=32,
                         train=True, num_workers=1, dtype=torch.uint8)
    red = next(iter(loader))[0][:, 0].float().mean(dim=1)         # N x W: red per column
    mirrored = (red[:, -1] < red[:, 0]).float().mean().item()
    assert 0.2 < mirrored < 0.8, mirrored


def test_ffcv_closing_an_old_epoch_iterator_leaves_the_newer_one_running(data):
    """An abandoned iterator, closed after a newer epoch started, must not stop the newer one."""
    loader = make_loader("ffcv", path_for("ffcv", data), batch_size=4, image_size=64, train=False,
                         num_workers=1, dtype=torch.uint8, shuffle=False)
    old = iter(loader)
    next(old)
    new = iter(loader)
    first = next(new)[1].clone()
    old.close()
    rest = [y.clone() for _, y in new]
    assert len(rest) == 4 and first.shape == (4,)


def test_ffcv_epoch_left_after_its_last_batch_was_decoded_does_not_hang(data):
    """Leaving an epoch whose remaining batches FFCV has all decoded (its thread then blocks on
    the end-of-epoch put): a capped feature extraction's pattern. The next epoch must start."""
    import threading
    import time
    # 4 batches: after the first is drawn, the other 3 fill FFCV's queue (batches_ahead=3) and its
    # end-of-epoch put blocks
    loader = make_loader("ffcv", path_for("ffcv", data), batch_size=5, image_size=64, train=False,
                         num_workers=1, dtype=torch.uint8, shuffle=False)
    done = []

    def consume():
        for _ in loader:
            time.sleep(1.0)   # FFCV decodes the rest and queues the end marker meanwhile
            break
        done.append(sum(x.shape[0] for x, _ in loader))
    t = threading.Thread(target=consume, daemon=True)
    t.start()
    t.join(timeout=60)
    assert done == [20], "the loader hung after an epoch was left early"


def test_ffcv_epoch_left_early_stops_decoding(data):
    """Leaving an epoch after one batch (reconstruction samples, a capped feature pass) must stop
    FFCV's thread, not let it decode the rest of the epoch first: the stop used to drain FFCV's
    queue while waiting, so every put succeeded and the thread ran the whole order (the trainer's
    two reconstruction loaders cost 11 s of a demo run's start-up that way)."""
    import operator
    loader = make_loader("ffcv", path_for("ffcv", data), batch_size=1, image_size=64, train=False,
                         num_workers=1, dtype=torch.uint8, shuffle=False)
    it = iter(loader)
    next(it)
    running = loader._running   # FFCV's EpochIterator for this epoch
    it.close()
    assert not running.is_alive()
    left = operator.length_hint(running.iter_ixes)
    # 20 batches: one drawn, at most batches_ahead (3) queued and one in flight when it stopped
    assert left >= 20 - 1 - 3 - 2, f"FFCV decoded {20 - left} of 20 batches for an epoch left after one"
    assert sum(x.shape[0] for x, _ in loader) == 20   # the next epoch runs in full
