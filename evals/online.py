"""The evals the trainer runs every `evals.every` epochs: kNN and the cached linear probe.

Why cheap and fixed: the accuracy-vs-epoch curve is only meaningful if every point is measured on
the same labelled samples, and it must cost seconds, not minutes. So: eval-mode (centre-crop)
loaders over the config's train/val data, shuffled once with a fixed seed so the first
`max_train` / `max_val` samples are the same class-mixed subset at every epoch; features are
extracted once and shared by kNN and the probe. Each record reports its `seconds`.

The trainer calls this on rank 0 only, so nothing here is a collective.
"""
from __future__ import annotations

import torch

from evals.common import Timer, make_eval_loader
from evals.features import extract_features
from evals.knn import knn_classify
from evals.linprobe import CACHED_BLR, train_probe_on_features

SUBSET_SEED = 1234          # fixed: the subset must not move between epochs or runs
_LOADERS: dict[tuple, object] = {}


def _loader(cfg_data: dict, path: str, batch_size: int, device):
    """Eval loaders are reused between calls (building FFCV / DALI ones costs seconds)."""
    backend = cfg_data.get("backend", "torch")
    options = dict(cfg_data.get("options") or {})
    key = (backend, str(path), int(cfg_data["image_size"]), batch_size, str(device),
           tuple(sorted(options.items())))
    if key not in _LOADERS:
        _LOADERS[key] = make_eval_loader(backend, path, int(cfg_data["image_size"]), batch_size,
                                         train=False, device=device,
                                         num_workers=int(cfg_data.get("num_workers", 2)),
                                         seed=SUBSET_SEED, shuffle=True, drop_last=False,
                                         sharded=False, **options)
    loader = _LOADERS[key]
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(0)
    return loader


def eval_seconds_estimate(model: torch.nn.Module, cfg_evals: dict, cfg_data: dict, device,
                          batches: int = 4) -> float:
    """Seconds one ``epoch_evals`` call will spend extracting features (the trainer's
    ``budget_minutes`` uses it; 0 when the evals are off).

    The eval train loader is run through the encoder three times: once to build its pipeline and
    warm up, then for 1 and for ``batches`` batches. Their difference is the steady time of a batch
    (a loader prefetches several batches at its start, so a single batch's time is mostly start-up);
    the rest of the 1-batch time is the start-up, paid once by each of the two loaders an eval reads."""
    if not (bool(cfg_evals.get("knn", True)) or bool(cfg_evals.get("linprobe", True))):
        return 0.0
    device = torch.device(device)
    bs = int(cfg_evals.get("batch_size", 256))
    pool = cfg_evals.get("pool", "cls")
    va = _loader(cfg_data, cfg_data["val_path"], bs, device)
    timed = []
    for n in (1, 1, batches):
        tr = _loader(cfg_data, cfg_data["train_path"], bs, device)  # cached; back at the epoch's start
        t = Timer()
        feats, _ = extract_features(model, tr, device, pool, n * bs, progress=False, gather=False)
        timed.append((t(), int(feats.shape[0])))
    (t1, n1), (tb, nb) = timed[1], timed[2]
    per_image = (tb - t1) / (nb - n1) if nb > n1 and tb > t1 else t1 / max(n1, 1)
    start_up = max(t1 - per_image * n1, 0.0)
    images = (min(int(cfg_evals.get("max_train", 2000)), len(tr) * bs)
              + min(int(cfg_evals.get("max_val", 500)), len(va) * bs))
    return 2 * start_up + per_image * images


def epoch_evals(model: torch.nn.Module, cfg_evals: dict, cfg_data: dict, device) -> list[dict]:
    """kNN and cached linear probe of `model`'s frozen encoder; a list of log_eval records.

    cfg_evals keys (defaults): knn (True), linprobe (True), max_train (2000), max_val (500),
    knn_k (20), knn_t (0.07), linprobe_epochs (10, raised to the cached probe's minimum steps),
    batch_size (256), pool ("cls"). cfg_data: backend, train_path, val_path, image_size,
    num_workers, options. Records: kind, top1, top5, loss, seconds (features + its own work),
    n_train, n_val, settings.
    """
    do_knn, do_probe = bool(cfg_evals.get("knn", True)), bool(cfg_evals.get("linprobe", True))
    if not (do_knn or do_probe):
        return []
    device = torch.device(device)
    pool = cfg_evals.get("pool", "cls")
    bs = int(cfg_evals.get("batch_size", 256))
    timer = Timer()
    tr = _loader(cfg_data, cfg_data["train_path"], bs, device)
    va = _loader(cfg_data, cfg_data["val_path"], bs, device)
    ftr, ytr = extract_features(model, tr, device, pool, cfg_evals.get("max_train", 2000),
                                desc="eval train features", progress=False, gather=False)
    fva, yva = extract_features(model, va, device, pool, cfg_evals.get("max_val", 500),
                                desc="eval val features", progress=False, gather=False)
    feat_s = timer()
    num_classes = getattr(tr, "num_classes", None) or int(max(ytr.max(), yva.max())) + 1
    sizes = {"n_train": int(ftr.shape[0]), "n_val": int(fva.shape[0])}
    # what the records were computed on: the run store keeps one record per (epoch, kind,
    # settings), so evals of the same epoch on other data or subsets never replace each other
    data = {"train_path": str(cfg_data["train_path"]), "val_path": str(cfg_data["val_path"]),
            "backend": cfg_data.get("backend", "torch"), "image_size": int(cfg_data["image_size"]),
            "subset_seed": SUBSET_SEED, **sizes}
    records = []
    if do_knn:
        t = Timer()
        k, T = int(cfg_evals.get("knn_k", 20)), float(cfg_evals.get("knn_t", 0.07))
        res = knn_classify(ftr.to(device), ytr, fva.to(device), yva, k=k, T=T,
                           num_classes=num_classes)
        records.append({"kind": "knn", **res, "loss": None, "seconds": feat_s + t(), **sizes,
                        "settings": {"k": k, "T": T, "pool": pool, "batch_size": bs, **data}})
    if do_probe:
        t = Timer()
        epochs = int(cfg_evals.get("linprobe_epochs", 10))
        res = train_probe_on_features(ftr, ytr, fva, yva, num_classes, epochs=epochs,
                                      batch_size=bs, blr=CACHED_BLR,
                                      warmup_epochs=max(1, epochs // 10), device=device)
        records.append({"kind": "linprobe", "top1": res["top1"], "top5": res["top5"],
                        "loss": res["loss"], "seconds": feat_s + t(), **sizes,
                        "train_top1": res["train_top1"],
                        "settings": {"pool": pool, "epochs": res["epochs"], "blr": CACHED_BLR,
                                     "batch_size": res["batch_size"], "cached": True, **data}})
    return records
