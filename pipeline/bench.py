"""Loader benchmark: each back end beside its bare library and the decode limit of what it decodes.

    python -m pipeline.bench                                  # ImageNet-sized sample (500x375 JPEGs)
    python -m pipeline.bench --data ../shared/data/imagenette --rows torch,ffcv,ffcv_bare

Rows, all built once and timed in interleaved rounds in one process, on the same files and
settings (train: RandomResizedCrop + flip; uint8 out, as the libraries produce it):

* ``torch``, ``ffcv``, ``dali``: the project's back ends (``make_loader(..., dtype=torch.uint8)``);
* ``ffcv_bare``: a bare FFCV ``Loader`` on the same .beton with the same decoder settings
  (RandomResizedCropRGBImageDecoder -> RandomHorizontalFlip -> ToTensor -> ToTorchImage, uint8,
  same workers, FFCV's own random order);
* ``dali_bare``: a bare DALI pipeline (``fn.readers.file`` with its own shuffling -> the same
  decode / crop ops as the project's, same threads) read through DALI's ``DALIGenericIterator``;
* ``dali_full_decode`` (not in the default rows): bare DALI decoding whole images, then cropping,
  to show what the ROI decode of ``fn.decoders.image_random_crop`` saves.

Each timing covers whole epochs and ends when the process is idle again, so that no loader
decodes ahead while another is timed (a bare DALI reader prefetches across its epoch boundary:
that work counts for its own row). A row's ratio to its bare library is the median of per-round
ratios, each pair timed back to back.

Decode limits, per back end, for the bytes it actually decodes, on one core times the cores used:

* ``torch`` / ``dali``: PIL full decode of the original JPEGs (DALI's ROI decode can beat it:
  it decodes only the crop);
* ``ffcv``: FFCV's own decoder on the JPEGs stored in the .beton (``--max-resolution`` px, far
  fewer pixels than the originals) plus its crop-resize, called image by image, no pipeline;
  beside it the same with FFCV 1.0.2's crop-region decode (``enable_crop``), the stretch
  experiment: decoding only the crop's region instead of the whole stored image.

It prints the load average at start and end. Goals (idle machine): ``ffcv`` >= 0.95x
``ffcv_bare``; ``ffcv`` >= 80% of its decode limit; the best back end >= 2x torch in wall-clock
and per CPU-second. With a load average above 1 at start or end it states no verdict and says
why: on a busy machine wall-clock rates measure the other jobs. Images per CPU-second (process,
threads and worker processes) are less sensitive to the load; they are printed beside.

Data: ``--data sample-imagenet`` writes the sample, and every .beton conversion is written, under
``--cache`` (announced at start; never inside the repository).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image

from . import make_loader
from .build_ffcv import DEFAULT_MAX_RESOLUTION, build
from .loaders import transforms
from .loaders.dali_loader import decode_and_crop
from .loaders.files import list_images
from .sample import make_sample_dataset

# FFCV and DALI are imported inside the functions of their rows: optional back ends whose imports
# cost seconds (numba, cv2; NVIDIA's wheel), and a row that cannot be built here is a note, not a crash

DEFAULT_CACHE = Path(os.environ.get("MAEPIPE_CACHE", Path.home() / ".cache" / "maepipe")) / "bench"
ROWS = ("torch", "ffcv", "ffcv_bare", "dali", "dali_bare", "dali_full_decode")
DEFAULT_ROWS = "torch,ffcv,ffcv_bare,dali,dali_bare"
BARE_OF = {"ffcv": "ffcv_bare", "dali": "dali_bare"}


def _log(*a):
    print(*a, file=sys.stderr, flush=True)


def load_average() -> float:
    return os.getloadavg()[0]


# ----------------------------------------------------------------------------- data


def resolve_split(data: str, split: str, sample_per_class: int, cache: Path) -> Path:
    """The image folder to benchmark: DATA/<split>, DATA itself, or the generated sample."""
    if data == "sample-imagenet":
        root = cache / f"sample-imagenet-{sample_per_class}"
        if not (root / split).is_dir():
            _log(f"writing the ImageNet-sized sample dataset to {root} ({sample_per_class}/class) ...")
            make_sample_dataset(root, imagenet_size=True, train_per_class=sample_per_class,
                                val_per_class=max(1, sample_per_class // 5))
        return root / split
    p = Path(data)
    if (p / split).is_dir():
        return p / split
    if p.is_dir():
        return p
    raise SystemExit(f"--data {data}: not a folder (expected DIR/{split}/<class>/*.jpg or 'sample-imagenet')")


def beton_for(folder: Path, max_resolution: int | None, num_workers: int, cache: Path) -> Path:
    """Convert ``folder`` once (cached under ``cache``) with pipeline.build_ffcv; return the .beton."""
    key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:10]
    out = cache / f"ffcv-{folder.parent.name}-{folder.name}-{key}-r{max_resolution or 'orig'}"
    beton = out / f"{folder.name}.beton"
    if not beton.is_file():
        tmp_src = out / "src"
        tmp_src.mkdir(parents=True, exist_ok=True)
        link = tmp_src / folder.name
        if not link.exists():
            link.symlink_to(folder.resolve(), target_is_directory=True)
        _log(f"converting {folder} -> {beton} (max_resolution={max_resolution}) ...")
        build(tmp_src, out, max_resolution=max_resolution, num_workers=num_workers)
    return beton


# ----------------------------------------------------------------------------- decode limits


def cpu_seconds() -> float:
    """User+system CPU time of this process, its threads and its live children (loader workers)."""
    me = psutil.Process()
    total = 0.0
    for p in [me] + me.children(recursive=True):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:  # a worker that exited since the listing: its time is gone with it
            pass
    return total


def _rate_loop(items, work, seconds: float) -> tuple[float, float]:
    """Calls of ``work(item)`` per wall second and per CPU second, cycling ``items`` for ``seconds``."""
    n, t0, c0 = 0, time.perf_counter(), cpu_seconds()
    while True:
        for it in items:
            work(it)
            n += 1
        if time.perf_counter() - t0 >= seconds:
            return n / (time.perf_counter() - t0), n / max(cpu_seconds() - c0, 1e-9)


def pil_decode_rate(paths: list[str], seconds: float = 4.0) -> tuple[float, float]:
    """Full-image JPEG decodes of the original files per wall / CPU second on one core (PIL)."""
    blobs = [Path(p).read_bytes() for p in paths]  # decode from memory: measure decoding, not the disk

    def work(b):
        with Image.open(io.BytesIO(b)) as im:
            im.convert("RGB").load()
    return _rate_loop(blobs, work, seconds)


def stored_jpegs(beton: Path, count: int) -> list[tuple[np.ndarray, int, int]]:
    """``(encoded bytes, height, width)`` of up to ``count`` JPEGs as stored in ``beton``."""
    from ffcv.reader import Reader
    r = Reader(str(beton))
    f0 = r.metadata["f0"] if "f0" in r.metadata.dtype.names else None
    ptr_size = dict(zip(r.alloc_table["ptr"].tolist(), r.alloc_table["size"].tolist()))
    out = []
    with open(beton, "rb") as fh:
        for i in np.linspace(0, r.num_samples - 1, min(count, r.num_samples)).astype(int):
            m = f0[i]
            if int(m["mode"]) != 0:  # raw pixels: nothing to decode
                continue
            fh.seek(int(m["data_ptr"]))
            out.append((np.frombuffer(fh.read(ptr_size[int(m["data_ptr"])]), np.uint8),
                        int(m["height"]), int(m["width"])))
    return out


def ffcv_decode_rate(beton: Path, image_size: int, count: int, seconds: float = 4.0,
                     crop_decode: bool = False) -> tuple[float, float]:
    """FFCV's own JPEG decode + RandomResizedCrop resize per image on one core, without a Loader.

    The same C functions FFCV's RandomResizedCropRGBImageDecoder calls (``imdecode`` of the
    whole stored JPEG, then ``resize_crop`` of the box to ``image_size``), so this is the limit of
    a loader decoding those bytes on one core. ``crop_decode``: decode only the crop's region
    instead, with the one crop decode FFCV 1.0.2 has (``imdecode(enable_crop=True)``: a lossless
    libjpeg-turbo transform cuts the box, widened to the 16-px MCU grid, out of the JPEG, which is
    then decoded): the stretch experiment of issue 11. It re-encodes the cut, so it can be slower.
    """
    from ffcv.libffcv import imdecode, resize_crop
    items = stored_jpegs(beton, count)
    if not items:
        raise ValueError(f"{beton}: no JPEG-encoded images to decode")
    hmax, wmax = max(h for _, h, _ in items), max(w for _, _, w in items)
    temp = np.empty(hmax * wmax * 3, np.uint8)
    dst = np.empty((image_size, image_size, 3), np.uint8)
    gen = transforms.seeded_generator(0)
    boxes = [transforms.sample_rrc_params(h, w, gen) for _, h, w in items]  # drawn outside the timing

    def work(k):
        data, h, w = items[k]
        p = boxes[k]
        if not crop_decode:
            imdecode(data, temp, h, w, h, w, 0, 0, 1, 1, False, False)
            resize_crop(temp[:h * w * 3].reshape(h, w, 3), p.top, p.top + p.height, p.left, p.left + p.width, dst)
            return
        x0, y0 = p.left - p.left % 16, p.top - p.top % 16  # the transform cuts on MCU boundaries
        cw, ch = p.left + p.width - x0, p.top + p.height - y0
        if imdecode(data, temp, h, w, ch, cw, x0, y0, 1, 1, True, False) != 0:
            raise RuntimeError("FFCV crop decode failed")
        resize_crop(temp[:ch * cw * 3].reshape(ch, cw, 3), p.top - y0, p.top - y0 + p.height,
                    p.left - x0, p.left - x0 + p.width, dst)
    return _rate_loop(range(len(items)), work, seconds)


# ----------------------------------------------------------------------------- loaders


def bare_ffcv(beton: Path, batch_size: int, image_size: int, workers: int):
    """A plain FFCV Loader with the project's decoder settings (uint8, FFCV's own random order)."""
    from ffcv.fields.decoders import IntDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage
    return Loader(str(beton), batch_size=batch_size, num_workers=workers, order=OrderOption.RANDOM,
                  drop_last=True, os_cache=True, batches_ahead=3, pipelines={
                      "image": [RandomResizedCropRGBImageDecoder((image_size, image_size),
                                                                 scale=transforms.RRC_SCALE,
                                                                 ratio=transforms.RRC_RATIO),
                                RandomHorizontalFlip(), ToTensor(), ToTorchImage(channels_last=True)],
                      "label": [IntDecoder(), ToTensor(), Squeeze()]})


def bare_dali(folder: Path, batch_size: int, image_size: int, workers: int, roi_decode: bool = True):
    """A plain DALI file-reader pipeline + DALIGenericIterator, same threads and ops as ``dali``."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
    split = list_images(folder)

    @pipeline_def(batch_size=batch_size, num_threads=workers, device_id=None, seed=0, prefetch_queue_depth=2)
    def pipe():
        jpegs, labels = fn.readers.file(files=split.paths, labels=split.labels, random_shuffle=True,
                                        name="Reader")
        if roi_decode:
            images = decode_and_crop(jpegs, image_size=image_size, train=True, decoder_device="cpu")
        else:
            images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
            images = fn.random_resized_crop(images, size=[image_size, image_size],
                                            random_area=list(transforms.RRC_SCALE),
                                            random_aspect_ratio=list(transforms.RRC_RATIO),
                                            interp_type=types.INTERP_CUBIC, antialias=True)
            images = fn.crop_mirror_normalize(images, mirror=fn.random.coin_flip(probability=0.5),
                                              output_layout="CHW", dtype=types.UINT8)
        return images, labels

    p = pipe()
    p.build()
    it = DALIGenericIterator([p], ["images", "labels"], reader_name="Reader",
                             last_batch_policy=LastBatchPolicy.DROP, auto_reset=True)

    class Batches:  # (images, labels) per batch, like the other rows
        def __iter__(self):
            for out in it:
                yield out[0]["images"], out[0]["labels"]
    return Batches()


def build_rows(names, folder: Path, beton: Path | None, args) -> tuple[dict, list[str]]:
    common = dict(batch_size=args.batch_size, image_size=args.image_size, train=True,
                  num_workers=args.workers, seed=0, dtype=torch.uint8)
    builders = {
        "torch": lambda: make_loader("torch", folder, **common),
        "ffcv": lambda: make_loader("ffcv", beton, **common),
        "ffcv_bare": lambda: bare_ffcv(beton, args.batch_size, args.image_size, args.workers),
        "dali": lambda: make_loader("dali", folder, **common),
        "dali_bare": lambda: bare_dali(folder, args.batch_size, args.image_size, args.workers),
        "dali_full_decode": lambda: bare_dali(folder, args.batch_size, args.image_size, args.workers,
                                              roi_decode=False),
    }
    loaders, notes = {}, []
    for name in names:
        try:
            loaders[name] = builders[name]()
        except Exception as e:  # report and go on: one broken back end must not hide the others
            notes.append(f"{name}: not built ({type(e).__name__}: {e})")
    return loaders, notes


def settle(poll: float = 0.1, max_wait: float = 10.0) -> tuple[float, float]:
    """Wait until this process's threads and children are idle; (wall, CPU seconds) when they went so.

    A bare DALI reader keeps decoding across its epoch boundary (its prefetch queue): that work is
    charged to the row that did it, not to the next row timed, and the idle wait itself is not.
    """
    t, c = time.perf_counter(), cpu_seconds()
    deadline = t + max_wait
    while True:
        time.sleep(poll)
        t2, c2 = time.perf_counter(), cpu_seconds()
        if c2 - c < 0.15 * (t2 - t) or t2 > deadline:
            return t, c
        t, c = t2, c2


def time_epochs(loader, epochs: int, first_epoch: int) -> tuple[float, float, int]:
    """Images per wall second and per CPU second over ``epochs`` whole epochs, until idle again."""
    settle()
    seen, t0, c0 = 0, time.perf_counter(), cpu_seconds()
    for e in range(first_epoch, first_epoch + epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(e)
        for x, _ in loader:
            seen += x.shape[0]
    if seen == 0:
        raise ValueError("the loader yielded no batches (fewer files than one batch?)")
    t1, c1 = settle()
    return seen / (t1 - t0), seen / max(c1 - c0, 1e-9), seen


def interleaved(loaders: dict, rounds: int, epochs: int) -> dict:
    """Per row: lists of per-round (wall, cpu) rates; the order of rows rotates every round so that
    each project row and its bare library are timed back to back, each first in turn."""
    names = list(loaders)
    pairs = [(n, BARE_OF[n]) for n in names if BARE_OF.get(n) in loaders]
    paired = {x for p in pairs for x in p}
    units = [list(p) for p in pairs] + [[n] for n in names if n not in paired]
    out = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(rounds):
        for unit in units[r % len(units):] + units[:r % len(units)]:
            for n in (unit if r % 2 == 0 else unit[::-1]):
                try:
                    w, c, _ = time_epochs(loaders[n], epochs, first_epoch=1 + r * epochs)
                except Exception as e:  # a back end failing mid-run is a row's error, not the bench's end
                    out[n].setdefault("error", f"{type(e).__name__}: {e}")
                    continue
                out[n]["wall"].append(w)
                out[n]["cpu"].append(c)
        _log(f"round {r + 1}/{rounds}: " + "  ".join(
            f"{n} {v['wall'][-1]:.0f}" for n, v in out.items() if v["wall"]) + f"  (load {load_average():.2f})")
    return out


# ----------------------------------------------------------------------------- run + report


def run(args) -> dict:
    res = {"load_start": os.getloadavg(), "cache": str(args.cache), "workers": args.workers,
           "batch_size": args.batch_size, "image_size": args.image_size, "rows": {}, "notes": []}
    _log(f"pipeline.bench: load average {res['load_start'][0]:.2f}; caches (sample data, .beton "
         f"conversions) go to {args.cache}")
    folder = resolve_split(args.data, args.split, args.sample_per_class, args.cache)
    split = list_images(folder)
    res.update(data=str(folder), num_files=len(split.paths))
    beton = None
    if any(r.startswith("ffcv") for r in args.rows):
        beton = beton_for(folder, args.max_resolution, args.workers, args.cache)
        res["beton"] = str(beton)
    step = max(1, len(split.paths) // args.decode_files)
    one, per_cpu = pil_decode_rate(split.paths[::step][:args.decode_files], args.decode_seconds)
    res["limits"] = {"originals_pil": {"one_core": one, "per_cpu_s": per_cpu, "limit": one * args.workers}}
    if beton is not None:
        one, per_cpu = ffcv_decode_rate(beton, args.image_size, args.decode_files, args.decode_seconds)
        res["limits"]["stored_ffcv"] = {"one_core": one, "per_cpu_s": per_cpu, "limit": one * args.workers}
        if not args.no_crop_decode:
            one, per_cpu = ffcv_decode_rate(beton, args.image_size, args.decode_files, args.decode_seconds,
                                            crop_decode=True)
            res["limits"]["stored_ffcv_crop_decode"] = {"one_core": one, "per_cpu_s": per_cpu,
                                                        "limit": one * args.workers}
    loaders, notes = build_rows(args.rows, folder, beton, args)
    res["notes"] += notes
    for name, loader in list(loaders.items()):  # warm-up: FFCV's JIT compile, DALI's first build
        try:
            time_epochs(loader, 1, first_epoch=0)
        except Exception as e:  # a back end that cannot run here (DALI/FFCV build, JIT) drops its row only
            res["notes"].append(f"{name}: failed in warm-up ({type(e).__name__}: {e})")
            del loaders[name]
    timings = interleaved(loaders, args.rounds, args.epochs)
    for name, t in timings.items():
        if not t["wall"]:
            res["notes"].append(f"{name}: failed ({t.get('error')})")
            continue
        res["rows"][name] = {"wall": statistics.median(t["wall"]), "cpu": statistics.median(t["cpu"]),
                             "all_wall": t["wall"], "all_cpu": t["cpu"]}
    for proj, bare in BARE_OF.items():
        a, b = res["rows"].get(proj), res["rows"].get(bare)
        if a and b:
            a["x_bare"] = statistics.median(x / y for x, y in zip(a["all_wall"], b["all_wall"]))
            a["x_bare_cpu"] = statistics.median(x / y for x, y in zip(a["all_cpu"], b["all_cpu"]))
            a["all_x_bare"] = [x / y for x, y in zip(a["all_wall"], b["all_wall"])]
    res["load_end"] = os.getloadavg()
    if "dali" in res["rows"] and "ffcv" in res["rows"]:
        res["notes"].append("dali (CPU) decodes the original JPEGs (only the crop's region), ffcv the stored "
                            "max-resolution ones: compare each with its own bare library and limit, not with "
                            "each other")
    if "dali" in res["rows"]:
        res["notes"].append("why dali on the CPU is no faster than torch: its ROI decode there runs at about "
                            "PIL's full-decode rate (libjpeg-turbo still decodes every row above the crop; "
                            "595 vs 584 images per CPU-second, measured), and its cubic antialiased resize "
                            "costs more than the decode (261 per CPU-second with it, 351 with linear): DALI "
                            "is built for device='mixed' (nvJPEG + GPU resize)")
    return res


def _limit_of(name: str, res: dict) -> dict | None:
    lim = res["limits"]
    return lim.get("stored_ffcv") if name.startswith("ffcv") else lim.get("originals_pil")


def goals(res: dict) -> list[str]:
    rows, out = res["rows"], []
    # Gate on the load before the bench starts: the end value includes the bench's own loader
    # threads (about one per worker, so ~2 on a 2-core machine by construction) and cannot tell an
    # idle machine from a busy one.
    if res["load_start"][0] > 1:
        out.append(f"no goal verdict: load average {res['load_start'][0]:.2f} at start (> 1: the machine is "
                   "busy, wall-clock rates and ratios measure the other jobs too); rerun on an idle machine")
        return out
    if "ffcv" in rows and "x_bare" in rows["ffcv"]:
        x = rows["ffcv"]["x_bare"]
        out.append(f"ffcv >= 0.95x bare FFCV: {'yes' if x >= 0.95 else 'NO'} ({x:.2f}x)")
    if "ffcv" in rows and "stored_ffcv" in res["limits"]:
        x = rows["ffcv"]["wall"] / res["limits"]["stored_ffcv"]["limit"]
        out.append(f"ffcv >= 80% of its decode+crop limit: {'yes' if x >= 0.8 else 'NO'} ({x:.0%})")
    mine = {n: r for n, r in rows.items() if n in ("torch", "ffcv", "dali")}
    if "torch" in mine and len(mine) > 1:
        best = max(mine, key=lambda n: mine[n]["wall"])
        xw, xc = mine[best]["wall"] / mine["torch"]["wall"], mine[best]["cpu"] / mine["torch"]["cpu"]
        out.append(f"best back end ({best}) >= 2x torch: wall {'yes' if xw >= 2 else 'NO'} ({xw:.2f}x), "
                   f"per CPU-second {'yes' if xc >= 2 else 'NO'} ({xc:.2f}x)")
    return out


def report(res: dict) -> str:
    la, lb = res["load_start"], res["load_end"]
    lines = [f"data: {res['data']} ({res['num_files']} files)  output {res['image_size']} px  batch "
             f"{res['batch_size']}  workers/threads {res['workers']}  train (RRC+flip), uint8 out",
             f"load average at start {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}, at end {lb[0]:.2f} {lb[1]:.2f} {lb[2]:.2f}"
             " (the end includes the bench's own threads)",
             "decode limits (one core x workers):"]
    names = {"originals_pil": "PIL full decode of the original JPEGs (torch, dali)",
             "stored_ffcv": "FFCV decode + crop-resize of the JPEGs stored in the .beton (ffcv)",
             "stored_ffcv_crop_decode": "the same, decoding only the crop's region (FFCV's enable_crop)"}
    for k, v in res["limits"].items():
        lines.append(f"  {names[k]}: {v['one_core']:.0f}/s x {res['workers']} = {v['limit']:.0f} images/s "
                     f"({v['per_cpu_s']:.0f} per CPU-second)")
    if "stored_ffcv_crop_decode" in res["limits"]:
        full, crop = res["limits"]["stored_ffcv"], res["limits"]["stored_ffcv_crop_decode"]
        lines.append(f"  crop-region decode / full decode: {crop['one_core'] / full['one_core']:.2f}x wall, "
                     f"{crop['per_cpu_s'] / full['per_cpu_s']:.2f}x per CPU-second (FFCV 1.0.2's crop is a "
                     "lossless transform + re-encode; a partial decode needs libjpeg-turbo >= 3.0)")
    lines += ["", f"{'row':<18}{'images/s':>10}{'x bare':>8}{'x limit':>9}{'x torch':>9}"
                  f"{'img/CPU-s':>11}{'x bare':>8}{'x torch':>9}  per-round images/s"]
    t = res["rows"].get("torch")
    for name, r in res["rows"].items():
        lim = _limit_of(name, res)
        cols = [f"{r['x_bare']:.2f}" if "x_bare" in r else "-",
                f"{r['wall'] / lim['limit']:.2f}" if lim else "-",
                f"{r['wall'] / t['wall']:.2f}" if t else "-"]
        cpu_cols = [f"{r['x_bare_cpu']:.2f}" if "x_bare_cpu" in r else "-",
                    f"{r['cpu'] / t['cpu']:.2f}" if t else "-"]
        lines.append(f"{name:<18}{r['wall']:>10.0f}{cols[0]:>8}{cols[1]:>9}{cols[2]:>9}{r['cpu']:>11.0f}"
                     f"{cpu_cols[0]:>8}{cpu_cols[1]:>9}  " + " ".join(f"{x:.0f}" for x in r["all_wall"]))
    for proj in BARE_OF:
        if "all_x_bare" in res["rows"].get(proj, {}):
            lines.append(f"{proj} / {BARE_OF[proj]} per round (back to back): "
                         + " ".join(f"{x:.2f}" for x in res["rows"][proj]["all_x_bare"]))
    lines += [""] + goals(res)
    lines += [f"note: {n}" for n in res["notes"]]
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m pipeline.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="sample-imagenet",
                    help="image folder (DIR or DIR/<split>) or 'sample-imagenet' (generated 500x375 JPEGs, "
                         "written under --cache) (default: %(default)s)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                    help="where the sample data and .beton conversions are written and reused "
                         "(default: %(default)s; $MAEPIPE_CACHE/bench when set)")
    ap.add_argument("--split", default="train", help="split folder under --data (default: %(default)s)")
    ap.add_argument("--rows", default=DEFAULT_ROWS,
                    help=f"comma-separated rows, of {', '.join(ROWS)} (default: %(default)s)")
    ap.add_argument("--image-size", type=int, default=224, help="output side in px (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=256, help="(default: %(default)s)")
    ap.add_argument("--workers", type=int, default=os.cpu_count(),
                    help="loader workers / threads = cores used, the same for every row (default: all "
                         "cores, %(default)s here)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=2,
                    help="whole epochs per row per round, after one warm-up epoch (default: %(default)s)")
    ap.add_argument("--max-resolution", type=int, default=None,
                    help="FFCV beton max side in px; 0 = original size (default: pipeline.build_ffcv's, 256)")
    ap.add_argument("--sample-per-class", type=int, default=150,
                    help="sample-imagenet images per class, 10 classes (default: %(default)s)")
    ap.add_argument("--decode-files", type=int, default=200,
                    help="files used for the decode limits (default: %(default)s)")
    ap.add_argument("--decode-seconds", type=float, default=4.0,
                    help="seconds per decode limit (default: %(default)s)")
    ap.add_argument("--no-crop-decode", action="store_true",
                    help="skip the crop-region decode experiment (default: measure it beside the limits)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here (default: none)")
    args = ap.parse_args(argv)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        ap.error(f"--rows: unknown {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    if args.max_resolution is None:
        args.max_resolution = DEFAULT_MAX_RESOLUTION
    args.max_resolution = args.max_resolution or None
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    res = run(args)
    print(report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
