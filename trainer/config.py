"""Training configuration: plain dataclasses, a YAML preset, and dotted ``key=value`` overrides.

Why dataclasses and not a config framework: the whole schema is readable in one screen, every key
has a default and a type, and validation errors can name the exact key, the file it came from and
the keys that would have been valid.

    cfg = load_config("configs/demo.yaml", ["optim.blr=3e-4", "data.batch_size=64"])
    cfg.optim.blr, cfg.to_dict()

The ``model`` section is open: besides ``name``, ``mask_ratio`` and ``norm_pix_loss`` it takes any
keyword of ``MaskedAutoencoderViT`` (checked against its signature), passed to ``model.create_model``.

Dotted keys and the keys harmless on resume are the project's shared ones (``common.dotted``,
``common.keys``); ``flatten`` and ``diff_configs`` keep a run's ``extra`` section whole.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common import dotted
from common.keys import HARMLESS_ON_RESUME
from model import MaskedAutoencoderViT


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and what was expected."""


@dataclass
class ModelConfig:
    name: str = "mae_vit_micro_patch8_64"
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    # Any other MaskedAutoencoderViT constructor keyword (img_size is taken from data.image_size).
    extra: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    backend: str = "ffcv"  # ffcv | dali | torch
    train_path: str = "data/sample_ffcv/train.beton"
    val_path: str = "data/sample_ffcv/val.beton"
    image_size: int = 64
    batch_size: int = 128  # per device (per process), per micro-batch
    num_workers: int = 2
    options: dict = field(default_factory=dict)  # back-end keywords for make_loader, e.g. {decode: batched}
    # train RandomResizedCrop's (min, max) area as a share of the image (MAE: [0.2, 1.0]); evals centre-crop
    crop_scale: list = field(default_factory=lambda: [0.2, 1.0])
    # check .beton files against their checksums (<file>.sums) before training, one full read each:
    # auto = files under 2 GiB that have checksums, skipping a file whose passing check <file>.verified
    # records and that is unchanged since | always (re-read; checksums required) | never
    verify: str = "auto"


@dataclass
class OptimConfig:
    blr: float = 1.5e-4  # base lr; lr = blr * effective_batch / 256
    lr: float = 0.0  # absolute lr; 0 = derive from blr
    weight_decay: float = 0.05
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_epochs: float = 1.0  # the ImageNet presets use 40
    min_lr: float = 0.0
    accum_steps: int = 1
    fused: bool = True  # torch's fused AdamW kernel on CUDA and CPU (false: the per-tensor loop)
    # The official pretraining decays cls/mask tokens (timm add_weight_decay without a skip list);
    # the default here exempts them like biases and norms. Set true to match the official run exactly.
    decay_tokens: bool = False


@dataclass
class EvalsConfig:
    every: int = 1  # epochs between online evals; 0 = off
    knn: bool = True
    linprobe: bool = True
    max_train: int = 2000
    max_val: int = 500
    knn_k: int = 20
    knn_t: float = 0.07
    linprobe_epochs: int = 10
    batch_size: int = 256
    pool: str = "cls"


@dataclass
class ReconsConfig:
    every: int = 1  # epochs between reconstruction samples; 0 = off
    num_train: int = 4
    num_val: int = 4
    seed: int = 0  # fixes the chosen images and their masking noise


@dataclass
class CheckpointConfig:
    every: int = 1  # epochs; 0 = only at the end / on signals
    keep_last: int = 2
    every_minutes: float = 30.0  # 0 = off; for long epochs
    every_steps: int = 0  # optimizer steps; 0 = off (tests use it for mid-epoch resume)
    milestones: list = field(default_factory=list)  # epochs whose checkpoint is kept forever


@dataclass
class LogConfig:
    progress: bool = True  # tqdm bar per epoch (rank 0)
    flush_every: int = 500  # metric rows buffered before a runstore write (the store also flushes every 10 s)


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"
    seed: int = 0
    epochs: int = 10  # with budget_minutes: the most epochs the run may train
    # wall-clock budget of the whole run in minutes (training and online evals); the trainer measures the
    # warm-up and fixes the epochs that fit (trainer.budget); 0 = off: train `epochs`
    budget_minutes: float = 0.0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    compile: bool = False
    channels_last: bool = False
    deterministic: bool = False  # torch.use_deterministic_algorithms + fixed threads (bit-exact resume on CPU)
    threads: int = 0  # torch intra-op threads; 0 = torch default
    clip_grad: float = 0.0  # max grad norm; 0 = off
    skip_nonfinite: bool = False  # skip (and count) steps with a non-finite loss instead of stopping
    # with skip_nonfinite: stop (exit 3) once more than this share of the steps so far was skipped
    # (at least one skip is always allowed): a run that skips often is diverging, not unlucky
    skip_nonfinite_max_share: float = 0.01
    dist_timeout_minutes: float = 60.0  # collective timeout (rank 0 runs evals while others wait)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    evals: EvalsConfig = field(default_factory=EvalsConfig)
    recons: ReconsConfig = field(default_factory=ReconsConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        extra = d["model"].pop("extra")
        d["model"].update(extra)
        return d


CHOICES = {
    "device": ("auto", "cpu", "cuda"),
    "precision": ("auto", "bf16", "fp16", "fp32"),
    "data.backend": ("ffcv", "dali", "torch"),
    "data.verify": ("auto", "always", "never"),
    "evals.pool": ("cls", "avg"),
}
POSITIVE = {"epochs", "data.image_size", "data.batch_size", "optim.accum_steps", "checkpoint.keep_last"}
NON_NEGATIVE = {
    "threads", "clip_grad", "data.num_workers", "optim.blr", "optim.lr", "optim.weight_decay",
    "optim.warmup_epochs", "optim.min_lr", "evals.every", "recons.every", "recons.num_train",
    "recons.num_val", "checkpoint.every", "checkpoint.every_minutes", "checkpoint.every_steps",
    "log.flush_every", "dist_timeout_minutes", "skip_nonfinite_max_share", "budget_minutes",
}


def _model_kwargs() -> set[str] | None:
    """Constructor keywords the model accepts (None if it takes any: ``**kwargs``)."""
    params = inspect.signature(MaskedAutoencoderViT.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return None
    return {n for n in params if n != "self"}


def _suggest(key: str, valid, prefix: str = "") -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def _coerce(value: Any, typ: Any, key: str, origin: str) -> Any:
    """Check (and gently convert: '3e-4' -> float, 1 -> 1.0) a value against a field type."""
    def bad(expected: str):
        raise ConfigError(f"{origin}: '{key}' must be {expected}, got {value!r} ({type(value).__name__})")

    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        bad("a boolean (true/false)")
    if typ is int:
        if isinstance(value, bool):
            bad("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        bad("an integer")
    if typ is float:
        if isinstance(value, bool):
            bad("a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        bad("a number")
    if typ is str:
        if isinstance(value, str):
            return value
        bad("a string")
    if typ is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        bad("a list, e.g. [1, 2]")
    if typ is dict:
        if isinstance(value, dict):
            return value
        bad("a mapping")
    return value


def _field_types(cls) -> dict:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _build(cls, data: dict, prefix: str, origin: str):
    """Build dataclass ``cls`` from a (possibly partial) dict, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: section '{prefix.rstrip('.') or '<top>'}' must be a mapping, got {data!r}")
    types = _field_types(cls)
    kwargs, extra = {}, {}
    for key, value in data.items():
        full = prefix + str(key)
        if cls is ModelConfig and key not in types:
            extra[key] = value
            continue
        if key not in types or (cls is ModelConfig and key == "extra"):
            valid = [k for k in types if not (cls is ModelConfig and k == "extra")]
            raise ConfigError(
                f"{origin}: unknown key '{full}'{_suggest(str(key), valid, prefix)}; valid keys"
                f"{' in ' + prefix.rstrip('.') if prefix else ''}: {', '.join(valid)}"
            )
        typ = types[key]
        if dataclasses.is_dataclass(typ):
            kwargs[key] = _build(typ, value if value is not None else {}, full + ".", origin)
        else:
            kwargs[key] = _coerce(value, typ, full, origin)
    obj = cls(**kwargs)
    if cls is ModelConfig:
        allowed = _model_kwargs()
        if allowed is not None:
            unknown = [k for k in extra if k not in allowed or k == "img_size"]
            if unknown:
                k = unknown[0]
                hint = " (set data.image_size instead)" if k == "img_size" else _suggest(k, allowed, "model.")
                raise ConfigError(
                    f"{origin}: unknown key 'model.{k}'{hint}; valid keys in model: name, mask_ratio, "
                    f"norm_pix_loss and MaskedAutoencoderViT keywords: {', '.join(sorted(allowed - {'img_size'}))}"
                )
        obj.extra = extra
    return obj


def _is_crop_scale(value: list) -> bool:
    numbers = [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return len(value) == 2 and len(numbers) == 2 and 0.0 < numbers[0] <= numbers[1] <= 1.0


def _check_values(cfg: TrainConfig, origin: str) -> None:
    flat = flatten(cfg.to_dict())
    for key, choices in CHOICES.items():
        if flat[key] not in choices:
            raise ConfigError(f"{origin}: '{key}' must be one of {', '.join(choices)}, got {flat[key]!r}")
    for key in POSITIVE:
        if not flat[key] > 0:
            raise ConfigError(f"{origin}: '{key}' must be > 0, got {flat[key]!r}")
    for key in NON_NEGATIVE:
        if flat[key] < 0:
            raise ConfigError(f"{origin}: '{key}' must be >= 0, got {flat[key]!r}")
    if cfg.skip_nonfinite_max_share > 1.0:
        raise ConfigError(f"{origin}: 'skip_nonfinite_max_share' must be in [0, 1], got {cfg.skip_nonfinite_max_share}")
    # Ratio 0 leaves the masked-patch loss nothing to average; it is defined (a plain autoencoder)
    # only when the loss covers all patches. The model enforces the same rule (check_mask_ratio).
    if bool(cfg.model.extra.get("loss_on_all_patches", False)):
        if not 0.0 <= cfg.model.mask_ratio < 1.0:
            raise ConfigError(f"{origin}: 'model.mask_ratio' must be in [0, 1) with model.loss_on_all_patches, "
                              f"got {cfg.model.mask_ratio}")
    elif not 0.0 < cfg.model.mask_ratio < 1.0:
        raise ConfigError(f"{origin}: 'model.mask_ratio' must be in (0, 1) (0 only with "
                          f"model.loss_on_all_patches: true), got {cfg.model.mask_ratio}")
    if len(cfg.optim.betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in cfg.optim.betas):
        raise ConfigError(f"{origin}: 'optim.betas' must be two numbers in [0, 1), got {cfg.optim.betas}")
    cfg.optim.betas = [float(b) for b in cfg.optim.betas]
    if not _is_crop_scale(cfg.data.crop_scale):
        raise ConfigError(f"{origin}: 'data.crop_scale' must be [min, max] with 0 < min <= max <= 1, "
                          f"got {cfg.data.crop_scale}")
    cfg.data.crop_scale = [float(v) for v in cfg.data.crop_scale]
    if cfg.optim.warmup_epochs > cfg.epochs:
        raise ConfigError(
            f"{origin}: 'optim.warmup_epochs' ({cfg.optim.warmup_epochs}) is longer than 'epochs' ({cfg.epochs})"
        )
    try:
        cfg.checkpoint.milestones = sorted(int(m) for m in cfg.checkpoint.milestones)
    except (TypeError, ValueError):
        raise ConfigError(f"{origin}: 'checkpoint.milestones' must be a list of epoch numbers") from None


def flatten(d: dict) -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}; an ``extra`` section stays one value."""
    return dotted.flatten(d, leaves=("extra",))


def _set_dotted(d: dict, key: str, value: Any, origin: str) -> None:
    try:
        dotted.set_dotted(d, key, value)
    except dotted.NotASectionError as e:
        raise ConfigError(f"{origin}: {e}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """'optim.blr=3e-4' -> ('optim.blr', '3e-4' parsed as YAML; types are checked later)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not key=value (e.g. optim.blr=3e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def from_dict(data: dict, origin: str = "config") -> TrainConfig:
    cfg = _build(TrainConfig, data or {}, "", origin)
    _check_values(cfg, origin)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML preset (or start from defaults), apply ``key=value`` overrides, validate."""
    data: dict = {}
    origin = "defaults"
    if path is not None:
        path = Path(path)
        origin = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    _build(TrainConfig, data, "", origin)  # report file errors against the file, before overrides
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value, f"override '{text}'")
        _build(TrainConfig, data, "", f"override '{text}'")
    return from_dict(data, origin + (" + overrides" if overrides else ""))


# Keys whose change on resume never alters the weights' trajectory (logging, evals, output, speed
# knobs): common.keys.HARMLESS_ON_RESUME. Anything else is flagged; the schedule and the global batch
# are refused unless allowed explicitly (``trainer.resume``). The old name stays for its importers.
HARMLESS_PREFIXES = HARMLESS_ON_RESUME
# Keys that change parameter shapes: resuming across them is an error.
SHAPE_KEYS = ("model.name", "data.image_size", "model.patch_size", "model.embed_dim", "model.depth",
              "model.num_heads", "model.decoder_embed_dim", "model.decoder_depth",
              "model.decoder_num_heads", "model.mlp_ratio", "model.in_chans")


def with_defaults(saved: dict) -> dict:
    """A saved config with the keys it lacks filled in from today's defaults.

    A checkpoint written before a key existed ran with the behaviour that key's default keeps
    (that is the rule for adding a key), so resuming it must not report ``None -> default`` as a
    change "that affects the training trajectory" (e.g. ``data.crop_scale``, added later)."""
    out, missing = copy.deepcopy(saved), object()
    for key, value in flatten(load_config(None).to_dict()).items():
        if dotted.get_dotted(out, key, missing) is missing:
            dotted.set_dotted(out, key, value)
    return out


def diff_configs(old: dict, new: dict) -> list[dict]:
    """Changed keys between two config dicts: [{'key', 'old', 'new', 'harmless'}].

    A key that is None on one side and absent on the other is not a change (unlike
    ``common.dotted.changed_keys``): a checkpoint written before a key existed must not report
    "None -> None" for a new key whose default is None, nor record it in its config_changes."""
    a, b = flatten(old), flatten(new)
    return [{"key": key, "old": a.get(key), "new": b.get(key), "harmless": key.startswith(HARMLESS_ON_RESUME)}
            for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
