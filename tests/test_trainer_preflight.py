"""The trainer checks its inputs before the work (issue 16, trainer rows), at the command line.

1. a preset's ``data.num_workers`` above the CPUs this process may use is clamped with a warning
   naming the key (the ImageNet preset's 10 workers crashed FFCV/numba on small machines);
2. a GPU-scale preset on a CPU-only machine says so at start (model size, bf16/compile on CPU),
   then gives the step time measured on the first steps, and suggests the CPU overrides;
4. a wrong ``data.val_path`` is an error at start when evals or reconstructions will read it;
5. ``data.train_path`` a folder with backend ffcv, or missing: exit 2, one line naming the key;
and ``--help`` shows every default, config keys included.
"""
import os
import signal
import subprocess
import sys
import time

import pytest

from trainer.config import flatten, load_config

from .test_trainer_helpers import ROOT, env, pretrain_cmd, run_pretrain, tiny_data, write_config  # noqa: F401

PRESET = ROOT / "configs" / "imagenet_vit_b16_800.yaml"


@pytest.fixture(scope="module")
def tiny_beton(tiny_data, tmp_path_factory):
    from pipeline.build_ffcv import build
    out = tmp_path_factory.mktemp("beton")
    build(tiny_data, out, num_workers=1, max_resolution=32, progress=False, log=lambda *a, **k: None)
    return out


def _one_cpu():
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def test_preset_workers_clamped_to_the_cpus_with_a_warning(tiny_beton, tmp_path):
    """The ViT-B preset (num_workers: 10) with tiny overrides, in a process allowed 1 CPU."""
    cmd = pretrain_cmd(PRESET, f"run_dir={tmp_path / 'run'}", f"data.train_path={tiny_beton / 'train.beton'}",
                       f"data.val_path={tiny_beton / 'val.beton'}", "device=cpu", "precision=fp32", "compile=false",
                       "model.name=mae_vit_pico_patch8_64", "data.image_size=32", "data.batch_size=8",
                       "optim.accum_steps=1", "epochs=1", "optim.warmup_epochs=0", "evals.every=0",
                       "recons.every=0", "log.progress=false")
    done = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=180,
                          preexec_fn=_one_cpu)
    assert done.returncode == 0, done.stderr  # old code: numba "number of threads must be between 1 and 1"
    assert "data.num_workers=10" in done.stderr and "using 1" in done.stderr, done.stderr


def test_gpu_scale_preset_on_cpu_says_so_and_measures_the_first_steps(tiny_data, tmp_path):
    cmd = pretrain_cmd(PRESET, f"run_dir={tmp_path / 'run'}", f"data.train_path={tiny_data / 'train'}",
                       f"data.val_path={tiny_data / 'val'}", "data.backend=torch", "data.num_workers=0",
                       "device=cpu", "compile=false", "data.image_size=32", "data.batch_size=2",
                       "optim.accum_steps=1", "epochs=1", "optim.warmup_epochs=0", "evals.every=0",
                       "recons.every=0", "log.progress=false", "threads=1")
    p = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 240
        for line in p.stderr:
            lines.append(line)
            if "per step on this CPU" in line or time.monotonic() > deadline:
                break
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    err = "".join(lines)
    start = next((ln for ln in lines if "GPU-scale" in ln), "")
    assert "mae_vit_base_patch16" in start and "M params" in start and "bf16" in start, err
    assert "configs/imagenette_cpu.yaml" in err and "precision=fp32" in err, err
    assert "per step on this CPU" in err and "per epoch" in err, err


def test_gpu_scale_notes_name_compile_and_precision():
    from trainer.preflight import cpu_scale_warning
    cfg = load_config(PRESET)
    msg = cpu_scale_warning(cfg, n_params=111_000_000)
    assert "compile" in msg and "bf16" in msg and "111.0M" in msg
    assert cpu_scale_warning(load_config(ROOT / "configs" / "imagenette_cpu.yaml"), n_params=2_000_000) is None


def test_wrong_val_path_is_an_error_at_start_when_evals_use_it(tiny_data, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tiny_data, tmp_path / "run", epochs=1,
                       evals={"every": 1, "max_train": 40, "max_val": 20, "linprobe": False})
    done = run_pretrain(cfg, f"data.val_path={tmp_path / 'nope'}")
    assert done.returncode == 2, done.stderr  # old code: 1, a traceback after the first epoch
    assert "data.val_path" in done.stderr and str(tmp_path / "nope") in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "run" / "metrics.zarr").exists()  # before any work
    # with evals and reconstructions off, nothing reads it: no error
    from trainer.pretrain import main
    assert main(["--config", str(cfg), f"data.val_path={tmp_path / 'nope'}", "evals.every=0", "recons.every=0"]) == 0


@pytest.mark.parametrize("case", ["folder_with_ffcv", "missing"])
def test_bad_train_path_is_one_line_exit_2(tiny_data, tmp_path, case):
    cfg = write_config(tmp_path / "c.yaml", tiny_data, tmp_path / "run", epochs=1)
    if case == "folder_with_ffcv":
        done = run_pretrain(cfg, "data.backend=ffcv")
        hint = "build_ffcv"
    else:
        done = run_pretrain(cfg, f"data.train_path={tmp_path / 'missing'}")
        hint = "does not exist"
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "data.train_path" in err and hint in err, err


def test_help_shows_every_default():
    out = subprocess.run([sys.executable, "-m", "trainer.pretrain", "--help"], cwd=ROOT, env=env(),
                         capture_output=True, text=True, timeout=60).stdout
    assert "--allow-change" in out and "(default:" in out
    for key, value in flatten(load_config(None).to_dict()).items():
        assert f"{key}=" in out, key
    assert "skip_nonfinite_max_share=0.01" in out and "data.num_workers=2" in out


def test_worker_clamp_shares_the_cpus_between_local_processes(monkeypatch):
    from trainer import preflight
    monkeypatch.setattr(preflight, "available_cpus", lambda: 16)
    cfg = load_config(PRESET, ["data.num_workers=10"])
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    msg = preflight.clamp_workers(cfg)
    assert cfg.data.num_workers == 2 and "data.num_workers=10" in msg and "8 processes" in msg
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    cfg = load_config(PRESET, ["data.num_workers=10"])
    assert preflight.clamp_workers(cfg) is None and cfg.data.num_workers == 10


def test_unusable_val_folder_for_reconstructions_is_exit_2_and_not_left_running(tiny_data, tmp_path):
    """The folder exists (so the start-up path check passes) but holds no images: the error comes
    from reading it, after the run was marked running; it must not stay "running"."""
    import runstore
    empty = tmp_path / "empty_val"
    empty.mkdir()
    cfg = write_config(tmp_path / "c.yaml", tiny_data, tmp_path / "run", epochs=1,
                       recons={"every": 1, "num_train": 2, "num_val": 2})
    done = run_pretrain(cfg, f"data.val_path={empty}")
    assert done.returncode == 2, done.stderr  # old code: 1, a traceback, status "running" then "stale"
    assert "Traceback" not in done.stderr and str(empty) in done.stderr, done.stderr
    assert runstore.open(tmp_path / "run").status == "crashed"


def test_resume_flag_does_not_swallow_an_override_and_names_a_directory(tiny_data, tmp_path, capsys):
    from trainer.pretrain import main
    cfg = write_config(tmp_path / "c.yaml", tiny_data, tmp_path / "run", epochs=1)
    assert main(["--config", str(cfg)]) == 0
    # "--resume epochs=2": argparse would take "epochs=2" as the checkpoint path
    assert main(["--config", str(cfg), "--resume", "epochs=2", "--allow-change", "epochs"]) == 0
    assert "config 'epochs' changed 1 -> 2" in capsys.readouterr().err
    assert main(["--config", str(cfg), "--resume", str(tmp_path / "run")]) == 4
    err = capsys.readouterr().err
    assert "is a directory" in err and "checkpoints" in err, err


def test_another_trainer_on_the_machine_is_found_and_warned_about(monkeypatch):
    # two CPU trainings side by side ran 5x slower each (OpenMP spinning): the trainer says so at start
    from trainer import preflight

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "trainer.pretrain"])
    try:
        deadline = time.time() + 10
        while other.pid not in preflight.other_trainers() and time.time() < deadline:
            time.sleep(0.1)   # its command line appears once exec has run
        assert other.pid in preflight.other_trainers()
        assert os.getpid() not in preflight.other_trainers()
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
        msg = preflight.concurrent_training_warning([other.pid])
        assert msg.startswith("warning: 1 other trainer") and str(other.pid) in msg and "OMP_WAIT_POLICY=PASSIVE" in msg
        monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
        assert preflight.concurrent_training_warning([other.pid]) is None
    finally:
        other.kill()
        other.wait()
    assert other.pid not in preflight.other_trainers()
    assert preflight.concurrent_training_warning([]) is None
