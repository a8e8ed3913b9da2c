"""Two "nodes" on one machine, launched by ``scripts/slurm/pretrain.sbatch``: the script starts one
``torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:PORT
--node-rank N`` per node (two launches joined by rendezvous), the nodes train, every node's task gets
SIGTERM (what Slurm's ``--signal=TERM@180`` does), the trainers save and exit 75, the script sees the
preemption and requeues the job; the requeued job (the script again) resumes, and the weights end
equal to a single-node run with the same global batch (1 process x 8 images), uninterrupted.

No Slurm here: two small stand-ins on PATH play its part. ``srun`` starts the command once per node
with SLURM_NODEID set, each task in its own session (as Slurm's tasks are), and notes their pids so
the test can signal them; ``scontrol`` answers ``show hostnames`` and records ``requeue``. Everything
else (the script, torchrun, rendezvous, the trainer, its checkpoints and run store) is real.

The model is the mask-token ablation (``model.mask_token_in_encoder: true``), the issue's exact
failure: through ``python -m trainer.pretrain`` under torchrun it used to die at its second step
(the decoder's mask_token got no gradient). tests/test_ddp_options.py covers every option under
DDP, tests/test_trainer_ddp.py the default one through the CLI on one node.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .test_trainer_helpers import ROOT, env, final_weights, max_checkpoint_step, pretrain_cmd, tiny_data, write_config  # noqa: F401

SBATCH = ROOT / "scripts" / "slurm" / "pretrain.sbatch"
EPOCHS, STEPS_PER_EPOCH = 10, 5  # 40 images / global batch 8: ~50 steps after the first checkpoint to stop in
JOB_ID = "4242"

FAKE_SRUN = r"""#!/bin/bash
# stands in for srun --ntasks-per-node=1: the command once per node, each task in its own session
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NNODES; i++)); do
    SLURM_NODEID=$i SLURM_PROCID=$i SLURM_LOCALID=0 setsid "$@" > "$FAKE_SLURM_DIR/task$i.log" 2>&1 &
    pids+=($!)
    echo $! >> "$FAKE_SLURM_DIR/task_pids"
done
rc=0
for p in "${pids[@]}"; do wait "$p"; c=$?; [ "$c" -gt "$rc" ] && rc=$c; done
exit $rc
"""
FAKE_SCONTROL = r"""#!/bin/bash
# stands in for scontrol: the node list's host names, and a record of requeue requests. The host list
# is as long as a big job's (more than a pipe holds): a script reading only its first line must not
# die of SIGPIPE under pipefail (it did, silently, with "| head -n 1")
case "$1" in
    show) echo 127.0.0.1; for ((i = 2; i <= 10000; i++)); do echo "node$i"; done ;;
    requeue) echo "requeue $2" >> "$FAKE_SLURM_DIR/requeued" ;;
    *) echo "fake scontrol: $*" >&2; exit 1 ;;
esac
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeSlurm:
    """A directory with the stand-ins, and one job's environment."""

    def __init__(self, root: Path):
        self.dir = root
        (root / "bin").mkdir(parents=True)
        for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
            (root / "bin" / name).write_text(text)
            (root / "bin" / name).chmod(0o755)
        self.procs: list[subprocess.Popen] = []

    def submit(self, config: Path, *overrides: str, restart: int = 0, **extra_env) -> subprocess.Popen:
        (self.dir / "task_pids").unlink(missing_ok=True)
        e = env()
        e.update(PATH=f"{self.dir / 'bin'}{os.pathsep}{e['PATH']}", FAKE_SLURM_DIR=str(self.dir),
                 SLURM_JOB_ID=JOB_ID, SLURM_NNODES="2", SLURM_JOB_NODELIST="node[1-2]",
                 SLURM_SUBMIT_DIR=str(ROOT), SLURM_RESTART_COUNT=str(restart), NPROC_PER_NODE="1",
                 RDZV_PORT=str(_free_port()), PYTHON=sys.executable, **extra_env)
        log = (self.dir / f"job{restart}.out").open("w")
        p = subprocess.Popen(["bash", str(SBATCH), str(config), *overrides], cwd=ROOT, env=e, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def task_pids(self) -> list[int]:
        f = self.dir / "task_pids"
        return [int(x) for x in f.read_text().split()] if f.exists() else []

    def output(self, restart: int) -> str:
        tasks = "\n".join(f.read_text() for f in sorted(self.dir.glob("task*.log")))
        return (self.dir / f"job{restart}.out").read_text() + "\n" + tasks

    def requeued(self) -> list[str]:
        f = self.dir / "requeued"
        return f.read_text().splitlines() if f.exists() else []

    def kill_all(self) -> None:
        """End this test's job scripts and tasks (their sessions), and nothing else."""
        for pgid in [p.pid for p in self.procs] + self.task_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)


def _status(run: Path) -> str:
    return json.loads((run / "status.json").read_text())["state"]


def test_two_nodes_preempted_requeued_and_resumed_match_one_node(tmp_path, tiny_data):
    run = tmp_path / "nodes"
    cfg = write_config(tmp_path / "c.yaml", tiny_data, run, epochs=EPOCHS, model={"mask_token_in_encoder": True},
                       optim={"blr": 3e-2, "warmup_epochs": 1, "eps": 1e-6},  # eps: see tests/test_ddp_options.py
                       checkpoint={"every": 1, "keep_last": 2, "every_minutes": 0, "every_steps": 2})
    ref_log = tmp_path / "one.log"
    ref = subprocess.Popen(pretrain_cmd(cfg, f"run_dir={tmp_path / 'one'}", "data.batch_size=8"), cwd=ROOT,
                           env=env(), stdout=ref_log.open("w"), stderr=subprocess.STDOUT)
    slurm = FakeSlurm(tmp_path / "slurm")
    try:
        # 1. the job: two nodes train; once the first checkpoint exists, each node's task gets SIGTERM
        job = slurm.submit(cfg, "data.batch_size=4")  # RUN_DIR from the config, as by default
        deadline = time.monotonic() + 150
        while max_checkpoint_step(run) < 2:
            if job.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the two nodes stopped or stalled before their first checkpoint:\n" + slurm.output(0)[-5000:])
            time.sleep(0.05)
        pids = slurm.task_pids()
        assert len(pids) == 2
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        assert job.wait(timeout=120) == 0, slurm.output(0)[-5000:]
        out = slurm.output(0)
        assert _status(run) != "finished", "the run ended before the signal came (a very busy machine?)"
        assert _status(run) == "preempted", out[-5000:]
        assert "preempted by signal 15" in out and "exit 75" in out, out[-5000:]
        assert f"preempted: requeueing job {JOB_ID}" in out and slurm.requeued() == [f"requeue {JOB_ID}"]
        assert "2 process(es)" in out and "effective batch 8 (4 x 1 accum x 2)" in out
        stopped_at = max_checkpoint_step(run)
        assert 2 <= stopped_at < EPOCHS * STEPS_PER_EPOCH, stopped_at

        # 2. the requeued job runs the script again: new rendezvous, resume from the checkpoint, finish
        again = slurm.submit(cfg, "data.batch_size=4", restart=1, RUN_DIR=str(run))
        assert again.wait(timeout=180) == 0, slurm.output(1)[-5000:]
        out2 = slurm.output(1)
        assert f"step {stopped_at}" in out2 and "resumed from" in out2, out2[-5000:]
        assert _status(run) == "finished" and slurm.requeued() == [f"requeue {JOB_ID}"]  # no second requeue
    finally:
        slurm.kill_all()

    # 3. the same weights as one node with the same global batch, uninterrupted
    assert ref.wait(timeout=180) == 0, ref_log.read_text()[-3000:]
    one, nodes = final_weights(tmp_path / "one"), final_weights(run)
    for k in one:
        torch.testing.assert_close(nodes[k], one[k], rtol=1e-3, atol=2e-4, msg=lambda m: f"{k}: {m}")


def test_sbatch_does_not_requeue_a_failed_run(tmp_path, tiny_data):
    """A crash or a bad config would fail again: the job ends with the error, no requeue."""
    slurm = FakeSlurm(tmp_path / "slurm")
    cfg = write_config(tmp_path / "c.yaml", tiny_data, tmp_path / "run")
    try:
        job = slurm.submit(cfg, "model.mask_ratio=0", RUN_DIR=str(tmp_path / "run"))
        assert job.wait(timeout=120) != 0
    finally:
        slurm.kill_all()
    assert slurm.requeued() == [] and "model.mask_ratio" in slurm.output(0)
