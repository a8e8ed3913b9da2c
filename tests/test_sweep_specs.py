"""The shipped sweeps (configs/sweeps/*.yaml): every preset plans into configs the trainer accepts,
every paper label names a row of evals.paper_refs, and the reference data is self-consistent."""
from __future__ import annotations

import pytest

from experiments import paper_refs, results, store, sweep
from experiments.plan import experiment_key
from experiments.spec import parse_seeds, parse_values
from experiments.trends import TRENDS

SWEEPS = sweep.list_sweeps()


def test_the_issue_sweeps_are_all_shipped():
    assert set(SWEEPS) >= {"mask_ratio", "decoder_depth", "decoder_width", "mask_token", "target", "sampler",
                           "epochs", "model_size", "wall_clock"}
    assert set(TRENDS) <= set(SWEEPS)


@pytest.mark.parametrize("name", SWEEPS)
@pytest.mark.parametrize("preset", ["cpu", "imagenet"])
def test_preset_plans_valid_trainer_configs(name, preset, tmp_path):
    spec = sweep.load_spec(name)
    points = sweep.plan(spec, preset, sweep_dir=tmp_path)
    assert len(points) >= 2
    sweep.validate(points)   # the trainer's own config validation (raises SweepError)
    assert len({p.config_hash() for p in points}) == len(points), "two points train the same thing"
    for p in points:
        assert p.config["run_dir"] == str(tmp_path / p.name)
        assert p.config["optim"]["warmup_epochs"] <= p.epochs
        evals_every = p.config["evals"]["every"]
        assert evals_every in (0, p.epochs)          # evaluate once, after the last epoch (or never)
    ref = paper_refs.get(spec.get("paper", name))
    labels = [p.paper for p in points if p.paper]
    if ref is not None:
        missing = [lab for lab in labels if ref.row(lab) is None]
        assert not missing, f"{name}/{preset}: paper labels {missing} are not rows of {ref.source}"


def test_cli_overrides_and_point_precedence(tmp_path):
    spec = sweep.load_spec("epochs")
    points = sweep.plan(spec, "cpu", epochs=3, sets=["data.batch_size=64", "model.mask_ratio=0.6"])
    # the varied key (epochs) wins over --epochs; --set applies to every point
    assert [p.epochs for p in points] == [5, 10, 20, 40]
    assert all(p.config["data"]["batch_size"] == 64 and p.config["model"]["mask_ratio"] == 0.6 for p in points)
    spec = sweep.load_spec("mask_ratio")
    points = sweep.plan(spec, "cpu", epochs=3, sets=["model.mask_ratio=0.6"])
    assert [p.config["model"]["mask_ratio"] for p in points] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert all(p.epochs == 3 and p.config["optim"]["warmup_epochs"] <= 3 for p in points)


def test_bad_names_and_presets_are_clear_errors():
    with pytest.raises(sweep.SweepError, match="unknown sweep 'nope'.*mask_ratio"):
        sweep.load_spec("nope")
    with pytest.raises(sweep.SweepError, match="no preset 'tpu'"):
        sweep.plan(sweep.load_spec("target"), "tpu")
    with pytest.raises(sweep.SweepError, match="model.bogus"):
        sweep.validate(sweep.plan(sweep.load_spec("target"), "cpu", sets=["model.bogus=1"]))
    assert sweep.main(["nope"]) == 2


def test_paper_reference_values_are_consistent():
    # Table 1's default row (8 x 512 decoder, no mask token, random 75%) is 73.5 lin / 84.9 ft everywhere
    for name, setting in [("decoder_depth", "8"), ("decoder_width", "512"), ("mask_token", "w/o [M]"),
                          ("target", "pixel (w/o norm)"), ("sampler", "random 75"), ("mask_ratio", "0.75")]:
        row = paper_refs.get(name).row(setting)
        assert (row.lin, row.ft) == (73.5, 84.9), name
    for ref in paper_refs.REFS.values():
        assert ref.source.startswith(("Table", "Fig.")) and ref.claim
    wall = paper_refs.get("wall_clock")
    assert wall.row("ViT-L dec 8").extra == {"hours": 15.4, "speedup": 2.8}
    assert round(42.4 / 15.4, 1) == 2.8   # the speed-ups are the hours' ratios


def test_every_cpu_point_has_its_parameter_count():
    """The table's parameter columns come from the point's config (incl. target: pca over norm_pix_loss)."""
    for name in sweep.list_sweeps():
        spec = sweep.load_spec(name)
        if "cpu" not in spec["presets"]:
            continue
        for p in sweep.plan(spec, "cpu"):
            enc, tot = results._param_counts(p.config)
            assert enc > 0 and tot > enc, (name, p.name)


def test_experiment_key_of_a_config_the_trainer_rejects_is_an_error():
    """Before: a config the trainer rejected was hashed raw (every error swallowed), so reuse quietly
    stopped matching; now the trainer's ConfigError names the key."""
    from experiments.plan import experiment_key
    from trainer.config import ConfigError

    good = sweep.plan(sweep.load_spec("mask_ratio"), "cpu")[0].config
    assert experiment_key(good) == experiment_key(dict(good, threads=3))   # not part of the experiment
    with pytest.raises(ConfigError, match="model.bogus"):
        experiment_key({**good, "model": {**good["model"], "bogus": 1}})


def test_a_resumed_sweep_accepts_the_trainers_harmless_keys_only(tmp_path):
    """The resume check of a sweep uses the trainer's harmless-on-resume keys (common.keys): loader
    workers, where the same data is read from, compile; a model setting is refused by name."""
    spec = sweep.load_spec("mask_ratio")
    old = sweep.plan(spec, "cpu", sweep_dir=tmp_path)
    plan_doc = {"points": [{"name": p.name, "config": p.config} for p in old]}
    harmless = sweep.plan(spec, "cpu", sweep_dir=tmp_path,
                          sets=["data.num_workers=7", "compile=true", "data.train_path=/elsewhere/train.beton"])
    sweep.check_plan(tmp_path, plan_doc, harmless)
    changed = sweep.plan(spec, "cpu", sweep_dir=tmp_path, sets=["model.norm_pix_loss=false"])
    with pytest.raises(sweep.SweepError, match="model.norm_pix_loss"):
        sweep.check_plan(tmp_path, plan_doc, changed)


def test_seeds_plan_one_run_per_point_and_seed(tmp_path):
    """The first seed keeps the point's directory (as without --seeds), the others are POINT_seedK."""
    points = sweep.plan(sweep.load_spec("epochs"), "cpu", sweep_dir=tmp_path, values=[10, 25], seeds=[0, 1])
    assert [p.name for p in points] == ["epochs_10", "epochs_10_seed1", "epochs_25", "epochs_25_seed1"]
    assert [p.point for p in points] == ["epochs_10", "epochs_10", "epochs_25", "epochs_25"]
    assert [p.seed for p in points] == [0, 1, 0, 1] and [p.epochs for p in points] == [10, 10, 25, 25]
    assert [p.config["run_dir"] for p in points] == [str(tmp_path / p.name) for p in points]
    sweep.validate(points)
    # seeds are different experiments for reuse; the first seed's run is today's point
    assert experiment_key(points[0].config) != experiment_key(points[1].config)
    today = sweep.plan(sweep.load_spec("epochs"), "cpu", sweep_dir=tmp_path, values=[10, 25])
    assert [p.name for p in today] == ["epochs_10", "epochs_25"] and today[0].config == points[0].config
    later = sweep.plan(sweep.load_spec("epochs"), "cpu", sweep_dir=tmp_path, values=[10], seeds=[3, 4])
    assert [(p.name, p.seed) for p in later] == [("epochs_10", 3), ("epochs_10_seed4", 4)]


def test_values_replace_the_presets_values_named_as_the_yamls():
    assert parse_values("10,25,50,100") == [10, 25, 50, 100]
    assert parse_values("0.25, 0.5,0.75,0.9") == [0.25, 0.5, 0.75, 0.9]
    points = sweep.plan(sweep.load_spec("epochs"), "cpu", values=parse_values("10,25,50,100"))
    assert [p.name for p in points] == ["epochs_10", "epochs_25", "epochs_50", "epochs_100"]
    assert [p.epochs for p in points] == [10, 25, 50, 100]
    points = sweep.plan(sweep.load_spec("mask_ratio"), "cpu", values=[0.25, 0.5, 0.75, 0.9])
    assert [p.config["model"]["mask_ratio"] for p in points] == [0.25, 0.5, 0.75, 0.9]
    assert [p.paper for p in points] == [None, None, "0.75", None]     # the YAML's paper labels still apply
    yaml_points = sweep.plan(sweep.load_spec("mask_ratio"), "cpu")
    assert points[3].config == yaml_points[-1].config and points[3].name == yaml_points[-1].name == "mask_ratio_0.9"
    for text in ("10,,25", "", "10,10", "a: 1"):
        with pytest.raises(sweep.SweepError, match="--values"):
            parse_values(text)
    for text in ("0,x", "1,1", "-1"):
        with pytest.raises(sweep.SweepError, match="--seeds"):
            parse_seeds(text)


@pytest.mark.parametrize("argv, message", [
    (["epochs", "--values", "10,abc"], "'epochs' must be an integer, got 'abc'"),
    (["mask_ratio", "--values", "0.5,1.5"], "mask_ratio_1.5: 'model.mask_ratio' must be in (0, 1)"),
    (["model_size", "--values", "mae_vit_pico_patch8_64,mae_vit_bogus"], "unknown model 'mae_vit_bogus'"),
    (["target", "--values", "1,2"], "--values needs a sweep that varies one key"),
    (["epochs", "--seeds", "0,x"], "--seeds '0,x': expected comma-separated integers"),
])
def test_bad_values_and_seeds_are_one_line_errors(argv, message, tmp_path, capsys):
    assert sweep.main([*argv, "--dry-run", "--out", str(tmp_path / "sw")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_dry_run_shows_values_and_seeds(tmp_path, capsys):
    assert sweep.main(["epochs", "--values", "10,25", "--seeds", "0,1", "--dry-run", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "values: 10, 25 (--values)" in text and "seeds:  0, 1" in text
    assert "epochs_25_seed1" in text and "seed=1" in text
    assert not any(tmp_path.iterdir())     # a dry run writes nothing


def test_a_resumed_sweep_with_other_seeds_or_values_is_refused(tmp_path, capsys):
    out = tmp_path / "sw"
    out.mkdir()
    store.write_plan(out, {"sweep": "epochs", "seeds": [0, 1], "values": [10, 25], "points": []})
    assert sweep.main(["epochs", "--values", "10,25", "--seeds", "0,1", "--dry-run", "--out", str(out)]) == 0
    capsys.readouterr()
    assert sweep.main(["epochs", "--values", "10,25", "--dry-run", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "started with seeds 0,1, now 0" in err and "--seeds 0,1" in err and len(err.splitlines()) == 1, err
    with pytest.raises(sweep.SweepError, match=r"started with --values 10,25, now --values 10\b"):
        sweep.run_sweep("epochs", out=out, values=[10], seeds=[0, 1], dry_run=True, echo=lambda *a: None)
    with pytest.raises(sweep.SweepError, match=r"now the sweep's own values \(no --values\)"):
        sweep.run_sweep("epochs", out=out, seeds=[0, 1], dry_run=True, echo=lambda *a: None)
    # a plan written before seeds existed was planned at its points' seed
    old = tmp_path / "old"
    old.mkdir()
    store.write_plan(old, {"sweep": "epochs", "points": [{"name": "gone", "config": {"seed": 0}}]})
    sweep.run_sweep("epochs", out=old, dry_run=True, echo=lambda *a: None)
    with pytest.raises(sweep.SweepError, match="seeds 0, now 0,1"):
        sweep.run_sweep("epochs", out=old, seeds=[0, 1], dry_run=True, echo=lambda *a: None)


def test_a_base_configs_wall_clock_budget_is_off_unless_the_sweep_sets_it(capsys):
    """The CPU presets set budget_minutes, which lets the trainer pick the epoch count from the
    machine's speed: a sweep on such a base must train every point its planned epochs (a slower
    point, e.g. mask ratio 0.25 or mask tokens in the encoder, would otherwise train fewer epochs
    than the others and the comparison would not be at one schedule). --set budget_minutes=M
    asks for the comparison at a fixed wall-clock instead."""
    from trainer.config import from_dict
    spec = sweep.load_spec("mask_token")
    points = sweep.plan(spec, "cpu", base_config="configs/imagenette_cpu_12min.yaml", epochs=10,
                        echo=print)
    assert all(from_dict(p.config).budget_minutes == 0 for p in points)
    assert all(p.epochs == 10 for p in points)
    out = capsys.readouterr().out
    assert "budget_minutes=12" in out and "--set budget_minutes=" in out
    kept = sweep.plan(spec, "cpu", base_config="configs/imagenette_cpu_12min.yaml", epochs=10,
                      sets=["budget_minutes=12"], echo=print)
    assert all(from_dict(p.config).budget_minutes == 12 for p in kept)
    assert "budget" not in capsys.readouterr().out
