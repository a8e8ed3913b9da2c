"""Config loading: presets validate, overrides convert, mistakes give errors that name the key."""
from pathlib import Path

import pytest

from trainer.config import ConfigError, diff_configs, load_config, from_dict
from trainer.pretrain import main

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))
REQUIRED = {"demo", "imagenette_cpu", "imagenet_vit_b16_800", "imagenet_vit_b16_1600", "imagenet_vit_l16_800",
            "imagenet_vit_l16_1600", "imagenet_vit_h14_1600"}


def test_all_presets_exist():
    assert REQUIRED <= {p.stem for p in CONFIGS}


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem in REQUIRED], ids=lambda p: p.stem)
def test_presets_validate(path):
    cfg = load_config(path)
    from model import list_models
    assert cfg.model.name in list_models()
    if path.stem.startswith("imagenet_"):
        # the paper recipe: 4096 effective on 8 GPUs, blr 1.5e-4, 40 warm-up epochs, AdamW (0.9, 0.95)
        assert cfg.data.batch_size * cfg.optim.accum_steps * 8 == 4096
        assert (cfg.optim.blr, cfg.optim.warmup_epochs, cfg.optim.betas) == (1.5e-4, 40, [0.9, 0.95])
        assert cfg.precision == "bf16" and cfg.data.image_size == 224


def test_overrides_are_typed():
    cfg = load_config(None, ["optim.blr=3e-4", "data.batch_size=64", "checkpoint.milestones=[800,400]",
                             "compile=true", "model.mask_sampler=block", "optim.betas=[0.9,0.999]"])
    assert cfg.optim.blr == pytest.approx(3e-4) and isinstance(cfg.optim.blr, float)
    assert cfg.data.batch_size == 64 and cfg.compile is True
    assert cfg.checkpoint.milestones == [400, 800]
    assert cfg.model.extra == {"mask_sampler": "block"}
    assert cfg.to_dict()["model"]["mask_sampler"] == "block"
    assert from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()  # round trip via the saved form


@pytest.mark.parametrize("override, words", [
    ("optim.lrr=1", ["optim.lrr", "did you mean 'optim.lr'", "valid keys in optim", "blr"]),
    ("bogus=1", ["bogus", "valid keys", "run_dir"]),
    ("data.batch_size=abc", ["data.batch_size", "integer"]),
    ("data.batch_size=0", ["data.batch_size", "> 0"]),
    ("precision=fp8", ["precision", "bf16"]),
    ("data.backend=tf", ["data.backend", "ffcv"]),
    ("model.depht=3", ["model.depht", "depth"]),
    ("model.img_size=32", ["data.image_size"]),
    ("optim.betas=[0.9]", ["optim.betas"]),
    ("noequals", ["key=value"]),
])
def test_bad_overrides_name_the_key(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_bad_file_errors_name_the_file(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("optim:\n  blr: fast\n")
    with pytest.raises(ConfigError, match=r"x.yaml.*optim.blr.*number"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_cli_reports_config_errors(capsys):
    assert main(["--config", "configs/demo.yaml", "optim.blrr=1"]) == 2
    assert "optim.blrr" in capsys.readouterr().err
    assert main(["--config", "configs/demo.yaml", "--print-config", "epochs=7"]) == 0
    assert "epochs: 7" in capsys.readouterr().out


def test_cli_overrides_may_come_before_and_after_options(capsys, tmp_path):
    # `--config X a=1 --run-dir R b=2` (a script adding options to a base command) used to end in
    # "unrecognized arguments: b=2": plain parse_args takes positionals only once
    assert main(["--config", "configs/demo.yaml", "epochs=7", "--run-dir", str(tmp_path / "r"),
                 "seed=3", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 7" in out and "seed: 3" in out and str(tmp_path / "r") in out


def test_diff_configs_flags_harmless_keys():
    a = load_config(None).to_dict()
    b = load_config(None, ["evals.every=5", "epochs=20", "optim.blr=1e-3"]).to_dict()
    d = {c["key"]: c["harmless"] for c in diff_configs(a, b)}
    assert d == {"evals.every": True, "epochs": False, "optim.blr": False}  # epochs: the cosine stretches


def test_diff_configs_treats_none_as_unset():
    # a checkpoint written before a key existed: a new key defaulting to None is not a change
    # ("None -> None" in the resume log and in config_changes); a real value is
    assert diff_configs({"model": {"name": "x"}}, {"model": {"name": "x", "pca_dims": None}}) == []
    assert diff_configs({}, {"data": {"verify": "auto"}}) == [
        {"key": "data.verify", "old": None, "new": "auto", "harmless": True}]


def test_a_key_added_later_is_not_a_change_on_resume():
    # a checkpoint from before data.crop_scale existed ran with its default: resuming it must not
    # log "None -> [0.2, 1.0] (affects the training trajectory)"; a real difference still shows
    from trainer.config import with_defaults
    new = load_config(None).to_dict()
    old = load_config(None).to_dict()
    del old["data"]["crop_scale"]
    assert [c["key"] for c in diff_configs(old, new)] == ["data.crop_scale"]
    assert diff_configs(with_defaults(old), new) == []
    old["data"]["batch_size"] = 7
    assert [c["key"] for c in diff_configs(with_defaults(old), new)] == ["data.batch_size"]
    assert "crop_scale" not in old["data"]   # the saved dict itself is not changed


@pytest.mark.parametrize("value", ["[0,1]", "[0.5,0.4]", "[0.2,1.5]", "[0.3]", "[a,1]", "[true,1]", "0.3"])
def test_bad_crop_scale_names_the_key(value, capsys):
    with pytest.raises(ConfigError, match=r"data\.crop_scale"):
        load_config(None, [f"data.crop_scale={value}"])
    assert main(["--config", "configs/demo.yaml", "--print-config", f"data.crop_scale={value}"]) == 2
    assert "data.crop_scale" in capsys.readouterr().err


def test_crop_scale_default_override_and_print_config(capsys):
    assert load_config(None).data.crop_scale == [0.2, 1.0]  # MAE's RandomResizedCrop scale
    cfg = load_config(None, ["data.crop_scale=[0.35,1]"])
    assert cfg.data.crop_scale == [0.35, 1.0] and all(isinstance(v, float) for v in cfg.data.crop_scale)
    assert main(["--config", "configs/demo.yaml", "--print-config", "data.crop_scale=[0.35,1.0]"]) == 0
    out = capsys.readouterr().out
    assert "crop_scale:" in out and "0.35" in out
    # it changes what the model trains on: flagged on resume, not harmless
    d = diff_configs(load_config(None).to_dict(), cfg.to_dict())
    assert d == [{"key": "data.crop_scale", "old": [0.2, 1.0], "new": [0.35, 1.0], "harmless": False}]
