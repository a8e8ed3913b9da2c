"""The eval CLIs as a user meets them: each finding of issue 16 (and the eval rows of issue 15) as a
subprocess run of `python -m evals.X`, checking the exit code and what it printed.

Real parts only: the built-in sample dataset (JPEG folders), a real checkpoint written by
`model.save_model_state`, a real run store, real `torch.load`, and a miniature ILSVRC tree made of
real Imagenette photographs (linked in place, not copied).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import runstore

REPO = Path(__file__).resolve().parents[1]
IMAGENETTE = Path(os.environ.get("IMAGENETTE", "/work/shared/data/imagenette"))
TINY_MODEL = dict(img_size=32, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16,
                  decoder_depth=1, decoder_num_heads=2)


def _module(name: str) -> str:
    """An eval CLI by its short name (`knn`), any other by its module path (`experiments.sweep`)."""
    return name if "." in name else f"evals.{name}"


def run_cli(module: str, *args, cwd=None) -> subprocess.CompletedProcess:
    """`python -m evals.MODULE ARGS` in a fresh interpreter, as a user would run it."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               TQDM_DISABLE="1")
    return subprocess.run([sys.executable, "-m", _module(module), *map(str, args)], cwd=cwd or REPO,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def in_process(capsys):
    """`evals.MODULE.main(ARGS)` in this interpreter, output captured: the same code path as
    run_cli from the argument parser to the exit code, without a new interpreter's ~2 s of imports.
    Used for the variants of a finding whose main case runs as a real subprocess."""
    import importlib

    def run(module: str, *args) -> subprocess.CompletedProcess:
        main = importlib.import_module(_module(module)).main
        capsys.readouterr()
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:              # argparse: --help, usage errors
            rc = e.code if isinstance(e.code, int) else 1
        out = capsys.readouterr()
        return subprocess.CompletedProcess([module, *args], rc, out.out, out.err)
    return run


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The user-mistake contract: exit 2, no traceback, the message on the last stderr line."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines, proc.stdout[-2000:]
    return lines[-1]


def save_tiny_checkpoint(path: Path, epoch: int = 1) -> Path:
    from model import create_model, save_model_state

    torch.manual_seed(0)
    return save_model_state(create_model("mae_vit_pico_patch8_64", **TINY_MODEL), path, epoch=epoch)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A sample dataset (10 classes x 3 train / 2 val, 32 px), a checkpoint outside any run, and a
    run directory whose checkpoints/ hold a ckpt-* file and final.pth."""
    from pipeline.sample import make_sample_dataset

    tmp = tmp_path_factory.mktemp("evals_cli")
    data = make_sample_dataset(tmp / "data", image_size=32, train_per_class=3, val_per_class=2,
                               seed=0, progress=False)
    ckpt = save_tiny_checkpoint(tmp / "loose.pth")
    run = tmp / "run"
    with runstore.create(run, {"run_dir": str(run), "epochs": 1}):
        pass
    save_tiny_checkpoint(run / "checkpoints" / "ckpt-e0001-s00000004.pth", epoch=1)
    save_tiny_checkpoint(run / "checkpoints" / "final.pth", epoch=1)
    return {"tmp": tmp, "data": Path(data), "ckpt": ckpt, "run": run}


def common(tiny, ckpt=None, data=None):
    return ["--ckpt", ckpt or tiny["ckpt"], "--data", data or tiny["data"], "--num-workers", "0",
            "--device", "cpu"]


# ----------------------------------------------------------------------------- 1. no code from a file
class _RunsAShellCommand:
    """Pickles to `os.system(cmd)`: what a malicious checkpoint does when it is unpickled."""

    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


@pytest.mark.parametrize("cli", ["linprobe", "knn", "finetune"])
def test_a_malicious_checkpoint_runs_nothing_and_is_refused_in_one_line(tiny, cli, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model": _RunsAShellCommand(f"touch {marker}"), "epoch": 1}, evil)
    proc = run_cli(cli, *common(tiny, ckpt=evil))
    assert not marker.exists(), f"evals.{cli} executed code from the checkpoint"
    line = one_line_error(proc)
    assert str(evil) in line and "system" in line, line


def test_an_official_format_checkpoint_with_its_namespace_still_loads(tiny, tmp_path):
    """Official MAE checkpoints ({"model", "optimizer", "epoch", "args": argparse.Namespace}) go
    through the allow-list, not a fallback to full unpickling."""
    import argparse

    sd = torch.load(tiny["ckpt"], weights_only=True)["model"]
    official = tmp_path / "checkpoint-1.pth"
    torch.save({"model": sd, "epoch": 1, "args": argparse.Namespace(model="mae_vit_base_patch16",
                                                                    input_size=32)}, official)
    proc = run_cli("knn", *common(tiny, ckpt=official))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "top1=" in proc.stdout


# ----------------------------------------------------------------------------- 2. never a 0-step head
def _last_record(run: Path, kind: str) -> dict:
    ev = runstore.open(run).evals(kind=kind)
    assert len(ev), f"no {kind} record in {run}"
    row = ev.iloc[-1].to_dict()
    row["settings"] = json.loads(row["settings"] or "{}")
    return row


@pytest.mark.parametrize("cli, extra", [
    ("linprobe", ["--epochs", "1", "--warmup-epochs", "0"]),                       # batch 256 default
    ("finetune", ["--epochs", "1", "--warmup-epochs", "0"]),                       # batch 128 default
])
def test_a_train_split_smaller_than_one_batch_still_trains_and_says_so(tiny, tmp_path, cli, extra):
    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run)
    proc = run_cli(cli, *common(tiny, ckpt=run / "checkpoints" / "final.pth"), *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--batch-size" in proc.stderr and "30" in proc.stderr, proc.stderr[-3000:]
    rec = _last_record(run, "linprobe_full" if cli == "linprobe" else "finetune")
    assert rec["steps"] > 0, rec
    assert rec["settings"]["batch_size"] == 30, rec


def test_a_split_with_too_few_images_for_any_batch_is_refused_before_the_work(tiny, tmp_path):
    data = tmp_path / "one"
    photos = sorted((tiny["data"] / "train").rglob("*.jpg"))
    for split, photo in (("train", photos[0]), ("val", photos[1])):
        (data / split / "a").mkdir(parents=True)
        shutil.copy(photo, data / split / "a" / "x.jpg")
    line = one_line_error(run_cli("linprobe", *common(tiny, data=data), "--epochs", "1"))
    assert str(data / "train") in line and "1 image" in line, line


def test_a_head_that_took_no_step_is_never_stored():
    from evals.inputs import UserError, require_steps

    require_steps(3, "linprobe")
    with pytest.raises(UserError, match="0 steps"):
        require_steps(0, "linprobe")


# ----------------------------------------------------------------------------- 3. path mistakes
def test_a_wrong_data_path_is_one_line_naming_it_and_what_is_valid(tiny, tmp_path):
    for cli in ("linprobe", "finetune"):       # knn: in the --num-workers test below
        line = one_line_error(run_cli(cli, *common(tiny, data=tmp_path / "no_such_dir")))
        assert str(tmp_path / "no_such_dir") in line and "train" in line and "val" in line, line


def test_a_split_folder_or_a_half_dataset_as_data_says_what_to_pass(tiny, tmp_path, in_process):
    line = one_line_error(run_cli("knn", *common(tiny, data=tiny["data"] / "train")))
    assert f"pass its parent {tiny['data']}" in line, line
    half = tmp_path / "half"
    shutil.copytree(tiny["data"] / "train", half / "train")
    line = one_line_error(in_process("linprobe", *common(tiny, data=half)))
    assert "only train" in line, line


def test_a_broken_val_split_is_found_before_the_work(tiny, tmp_path, in_process):
    data = tmp_path / "noval"
    shutil.copytree(tiny["data"] / "train", data / "train")
    (data / "val").mkdir()                       # exists, but holds no images
    for cli, run in (("knn", run_cli), ("finetune", in_process)):
        line = one_line_error(run(cli, *common(tiny, data=data)))
        assert str(data / "val") in line, line


def test_ckpt_a_run_directory_means_its_final_checkpoint_and_says_so(tiny, tmp_path):
    run = (tmp_path / "run").resolve()          # records name the resolved file
    shutil.copytree(tiny["run"], run)
    proc = run_cli("knn", *common(tiny, ckpt=run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(run / "checkpoints" / "final.pth") in proc.stdout + proc.stderr
    assert _last_record(run, "knn")["settings"]["checkpoint"] == str(run / "checkpoints" / "final.pth")
    (run / "checkpoints" / "final.pth").unlink()              # unfinished run: newest checkpoint
    proc = run_cli("knn", *common(tiny, ckpt=run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ckpt-e0001-s00000004.pth" in proc.stdout + proc.stderr


def test_a_missing_checkpoint_or_an_empty_run_is_one_line(tiny, tmp_path, in_process):
    line = one_line_error(run_cli("knn", *common(tiny, ckpt=tmp_path / "nope.pth")))
    assert str(tmp_path / "nope.pth") in line and "run directory" in line, line
    empty = tmp_path / "empty_run"
    (empty / "checkpoints").mkdir(parents=True)
    line = one_line_error(in_process("linprobe", *common(tiny, ckpt=empty)))
    assert str(empty) in line and "no checkpoint" in line, line
    junk = tmp_path / "notes.pth"
    junk.write_text("not a checkpoint")
    line = one_line_error(in_process("finetune", *common(tiny, ckpt=junk)))
    assert str(junk) in line, line


def test_a_checkpoint_that_does_not_match_its_checksum_is_refused(tiny, tmp_path):
    import hashlib

    ckpt = save_tiny_checkpoint(tmp_path / "ckpt-e0001-s00000004.pth")
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    (tmp_path / (ckpt.name + ".sha256")).write_text(f"{digest}  {ckpt.name}\n")   # as the trainer writes
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF                       # one flipped byte inside the weights
    ckpt.write_bytes(bytes(data))
    line = one_line_error(run_cli("knn", *common(tiny, ckpt=ckpt)))
    assert str(ckpt) in line and "checksum" in line, line


def test_an_option_the_chosen_protocol_ignores_is_refused(tiny, in_process):
    line = one_line_error(in_process("linprobe", *common(tiny), "--max-train", "10"))
    assert "--max-train" in line and "--cached" in line, line


def test_too_many_workers_are_clamped_with_a_warning_naming_the_flag(tiny, tmp_path):
    # with a wrong --data too, so code without the check stops at the data error (it would fork them)
    proc = run_cli("knn", "--ckpt", tiny["ckpt"], "--data", tmp_path / "nope", "--num-workers", "9999")
    line = one_line_error(proc)
    assert str(tmp_path / "nope") in line and "train" in line and "val" in line, line
    assert "--num-workers 9999" in proc.stderr, proc.stderr[-2000:]


# ----------------------------------------------------------------------------- 4. ILSVRC layouts
def _mini_imagenet(root: Path, kaggle: bool) -> Path:
    """3 Imagenette classes as ILSVRC ships them: train/<wnid>/*.JPEG and a flat val/ of
    ILSVRC2012_val_*.JPEG labelled by LOC_val_solution.csv: beside train/ and val/, or, in Kaggle's
    download, the tree under ILSVRC/Data/CLS-LOC/ and the CSV at the top. Files are links to the
    real photographs (read in place). Returns what --data gets."""
    tree = root / "ILSVRC" / "Data" / "CLS-LOC" if kaggle else root
    wnids = sorted(d.name for d in (IMAGENETTE / "train").iterdir() if d.is_dir())[:3]
    rows = ["ImageId,PredictionString"]
    (tree / "val").mkdir(parents=True)
    for wnid in wnids:
        (tree / "train" / wnid).mkdir(parents=True)
        for src in sorted((IMAGENETTE / "train" / wnid).iterdir())[:6]:
            (tree / "train" / wnid / src.name).symlink_to(src)
        for src in sorted((IMAGENETTE / "val" / wnid).iterdir())[:3]:
            image_id = f"ILSVRC2012_val_{len(rows):08d}"
            (tree / "val" / f"{image_id}.JPEG").symlink_to(src)
            rows.append(f"{image_id},{wnid} 10 10 100 100 {wnid} 20 20 90 90")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("layout, cli, extra", [
    ("ilsvrc", "knn", []),
    ("ilsvrc", "finetune", ["--epochs", "1", "--batch-size", "8", "--warmup-epochs", "0"]),
    ("kaggle", "knn", []),
])
def test_readme_commands_on_a_miniature_imagenet_with_a_flat_val(tiny, tmp_path, layout, cli, extra):
    if not IMAGENETTE.is_dir():
        pytest.skip(f"{IMAGENETTE} not present")
    data = _mini_imagenet(tmp_path / layout, kaggle=layout == "kaggle")
    proc = run_cli(cli, *common(tiny, data=data), *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "top1=" in proc.stdout, proc.stdout[-2000:]
    assert re.search(r"n_val['\"]?(=|: )9\b", proc.stdout), proc.stdout[-2000:]


# ----------------------------------------------------------------------------- 5. what a record was computed on
def test_evals_on_other_data_or_settings_never_replace_each_other(tiny, tmp_path):
    from pipeline.sample import make_sample_dataset

    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run)
    other = make_sample_dataset(tmp_path / "other", image_size=32, train_per_class=2,
                                val_per_class=2, seed=1, progress=False)
    ckpt = run / "checkpoints" / "final.pth"
    for data in (tiny["data"], other):
        proc = run_cli("knn", *common(tiny, ckpt=ckpt, data=data))
        assert proc.returncode == 0, proc.stderr[-3000:]
    ev = runstore.open(run).evals(kind="knn")
    assert len(ev) == 2, ev                 # before: the second replaced the first
    settings = [json.loads(s) for s in ev["settings"]]
    assert {s["data"] for s in settings} == {str(Path(tiny["data"]).resolve()), str(Path(other).resolve())}
    for s in settings:
        for key in ("data", "train_path", "val_path", "backend", "image_size", "n_train", "n_val",
                    "batch_size", "k", "temperature", "pool", "checkpoint"):
            assert key in s, (key, s)
    assert sorted(s["n_train"] for s in settings) == [20, 30]


# ----------------------------------------------------------------------------- 6. --help shows every default
@pytest.mark.parametrize("cli, subprocess_run, defaults", [
    ("linprobe", True, {"--epochs": "90", "--batch-size": "256", "--num-workers": "2", "--pool": "cls"}),
    ("knn", False, {"--k": "20", "--temperature": "0.07", "--batch-size": "256"}),
    ("finetune", False, {"--batch-size": "128", "--smoothing": "0.1", "--mixup": "0.8", "--cutmix": "1.0"}),
    ("experiments.sweep", True, {"--preset": "cpu"}),
])
def test_help_shows_every_default_and_what_is_written_where(cli, subprocess_run, defaults, in_process):
    proc = (run_cli if subprocess_run else in_process)(cli, "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())        # argparse wraps lines
    for flag, value in defaults.items():
        options = text.split(" options: ", 1)[1]      # the option list, not the usage or examples
        after = options.split(f" {flag} ", 1)[1][:400]
        assert f"(default: {value})" in after.split(" --")[0], (flag, after)
    assert "writes" in text.lower() or "written" in text.lower(), text[:600]
    assert ("evals.zarr" if cli != "experiments.sweep" else "runs/sweeps/") in text


def test_every_eval_option_with_a_default_shows_it():
    """In-process companion of the test above: no option of the three CLIs hides its default
    (an option whose default is None says in its help what None means)."""
    import argparse

    from evals import finetune, imagenette_table, knn, layers, linprobe

    for mod in (linprobe, knn, finetune, imagenette_table, layers):
        parser = mod.build_parser()
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.required or action.default in (False, argparse.SUPPRESS):
                continue
            help_text = formatter._expand_help(action) if action.help else ""
            assert "default" in help_text, (mod.__name__, action.option_strings, help_text)


def test_probe_and_finetune_take_uint8_batches_as_the_loaders_hand_them_out(tiny):
    """Pipeline contract: loaders may yield uint8 as the library produced it and the consumer
    normalises on its device (pipeline.to_model_input); float32 batches give the same result."""
    from evals.common import load_mae, make_eval_loader
    from evals.finetune import build_vit, finetune
    from evals.linprobe import train_probe_on_loader

    mae = load_mae(tiny["ckpt"]).model
    results = {}
    for dtype in (torch.uint8, torch.float32):
        def loader(split, train):
            return make_eval_loader("torch", str(tiny["data"] / split), 32, 10, train, torch.device("cpu"),
                                    num_workers=0, seed=0, dtype=dtype)
        torch.manual_seed(0)
        probe = train_probe_on_loader(mae, loader("train", True), loader("val", False), 10, "cpu",
                                      epochs=1, warmup_epochs=0)
        torch.manual_seed(0)
        tuned = finetune(build_vit(mae, 10, 0.0), loader("train", True), loader("val", False), 10, "cpu",
                         epochs=1, blr=5e-4, layer_decay=0.65, warmup_epochs=0)
        assert probe["steps"] == 3 and tuned["steps"] == 3
        results[dtype] = (probe["loss"], tuned["loss"])
    assert results[torch.uint8] == pytest.approx(results[torch.float32], rel=1e-4)


# ----------------------------------------------------------------------------- 7. failed runs, DDP
def test_a_diverging_finetune_is_one_line_naming_the_step_and_exit_3(tiny, in_process):
    """A non-finite loss was a FloatingPointError traceback; now the step, what to change, exit 3
    (the trainer's code for the same failure)."""
    proc = in_process("finetune", *common(tiny), "--epochs", "2", "--warmup-epochs", "0",
                      "--batch-size", "10", "--blr", "1e30", "--mixup", "0", "--cutmix", "0")
    assert proc.returncode == 3, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    line = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1]
    assert line.startswith("python -m evals.finetune: error: the fine-tune loss is "), line
    assert re.search(r"epoch \d/2, step \d/3", line) and "--blr (now 1e+30)" in line, line


def test_under_torchrun_only_rank_0_says_a_user_error(tiny, tmp_path, in_process, monkeypatch):
    """torchrun starts N copies with the same arguments: the same error once, not N times; every
    process exits with the same code."""
    args = common(tiny, data=tmp_path / "no_such_dir")
    monkeypatch.setenv("RANK", "1")
    proc = in_process("knn", *args)
    assert proc.returncode == 2 and proc.stderr == "", (proc.returncode, proc.stderr)
    monkeypatch.setenv("RANK", "0")
    assert str(tmp_path / "no_such_dir") in one_line_error(in_process("knn", *args))


def test_torchrun_with_a_wrong_path_prints_the_error_once(tiny, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "evals.knn", *map(str, common(tiny, data=tmp_path / "nope"))],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.count("python -m evals.knn: error: --data") == 1, proc.stderr[-3000:]


def test_imagenette_table_takes_run_dir_and_pool_from_its_config(tmp_path, capsys):
    from evals import imagenette_table
    assert imagenette_table.config_facts("configs/imagenette_cpu_60min.yaml") == \
        ("runs/imagenette_cpu_60min", "avg")
    assert imagenette_table.config_facts("configs/imagenette_cpu.yaml") == ("runs/imagenette_cpu", "cls")
    bad = tmp_path / "bad.yaml"
    for text, words in (("run_dir: [unclosed", "cannot read it as YAML"), ("seed: 0\n", "no run_dir"),
                        ("run_dir: runs/x\nevals: {pool: max}\n", "evals.pool 'max'")):
        bad.write_text(text)
        assert imagenette_table.main(["--config", str(bad), "--work", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and str(bad) in err and words in err, err
    assert not (tmp_path / "data").exists()     # refused before converting anything
