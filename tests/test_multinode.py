"""Two "nodes" on one machine: two torchrun launches joined by c10d rendezvous train, are preempted
by SIGTERM (the trainer saves and exits 75, the run store says "preempted"), are launched again and
resume, and end with the weights of a single-node run with the same global batch (1 x 8 images).
The model is the mask-token ablation (``model.mask_token_in_encoder: true``), the issue's exact
failure: through ``python -m trainer.pretrain`` under torchrun it used to die at its second step
(the decoder's mask_token got no gradient); every other option is covered under DDP by
tests/test_ddp_options.py, the default one through the CLI by tests/test_trainer_ddp.py.

This is what ``scripts/slurm/pretrain.sbatch`` does on a cluster: one torchrun per node, the
rendezvous endpoint on the first node, SIGTERM before the time limit, and a requeue that resumes.
"""
from __future__ import annotations

import contextlib
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

EPOCHS, STEPS_PER_EPOCH = 6, 5  # 40 images / global batch 8; long enough to be stopped half way


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd, log: Path) -> subprocess.Popen:
    # own session: a failed test can end exactly these launchers and their workers, nothing else
    return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _two_nodes(cfg: Path, logs: Path, tag: str, *overrides: str) -> list[subprocess.Popen]:
    port = _free_port()
    return [_start([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                    "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", tag,
                    "--node-rank", str(node), "-m", "trainer.pretrain", "--config", str(cfg), *overrides],
                   logs / f"{tag}-node{node}.log") for node in (0, 1)]


def _wait(procs, timeout: float, what: str, logs: list[Path]) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(q.pid, signal.SIGKILL)
            pytest.fail(f"{what} did not finish in {timeout:.0f}s:\n" + "\n".join(f.read_text()[-3000:] for f in logs))
    return codes


def _status(run: Path) -> str:
    import json
    return json.loads((run / "status.json").read_text())["state"]


def test_two_nodes_preempted_and_resumed_match_one_node(tmp_path, tiny_data):
    run = tmp_path / "nodes"
    cfg = write_config(tmp_path / "c.yaml", tiny_data, run, epochs=EPOCHS, model={"mask_token_in_encoder": True},
                       optim={"blr": 3e-2, "warmup_epochs": 1, "eps": 1e-6},  # eps: see tests/test_ddp_options.py
                       checkpoint={"every": 1, "keep_last": 2, "every_minutes": 0, "every_steps": 2})
    ref_log = tmp_path / "one.log"
    ref = _start(pretrain_cmd(cfg, f"run_dir={tmp_path / 'one'}", "data.batch_size=8"), ref_log)

    # 1. two nodes train; once the first checkpoint exists, every node's launcher gets SIGTERM (as
    #    Slurm signals each task before the time limit); the agents pass it to the trainers
    first = _two_nodes(cfg, tmp_path, "first", "data.batch_size=4")
    logs = [tmp_path / f"first-node{n}.log" for n in (0, 1)]
    deadline = time.monotonic() + 120
    while max_checkpoint_step(run) < 2:
        if any(p.poll() is not None for p in first) or time.monotonic() > deadline:
            pytest.fail("the two nodes stopped or stalled before their first checkpoint:\n"
                        + "\n".join(f.read_text()[-3000:] for f in logs))
        time.sleep(0.05)
    for p in first:
        p.send_signal(signal.SIGTERM)
    _wait(first, 90, "the preempted nodes", logs)
    out = "\n".join(f.read_text() for f in logs)
    assert _status(run) == "preempted", out[-4000:]
    assert "preempted by signal 15" in out and "exit 75" in out, out[-4000:]
    stopped_at = max_checkpoint_step(run)
    assert 2 <= stopped_at < EPOCHS * STEPS_PER_EPOCH, stopped_at

    # 2. launched again (the requeued job): the nodes rendezvous anew and resume from the checkpoint
    second = _two_nodes(cfg, tmp_path, "second", "data.batch_size=4")
    logs2 = [tmp_path / f"second-node{n}.log" for n in (0, 1)]
    assert _wait(second, 180, "the resumed nodes", logs2) == [0, 0], "\n".join(f.read_text()[-3000:] for f in logs2)
    out2 = "\n".join(f.read_text() for f in logs2)
    assert f"step {stopped_at}" in out2 and "resumed from" in out2, out2[-3000:]
    assert "2 process(es)" in out2 and "effective batch 8 (4 x 1 accum x 2)" in out2
    assert _status(run) == "finished"

    # 3. the same weights as one node with the same global batch, uninterrupted
    assert _wait([ref], 180, "the single-node run", [ref_log]) == [0], ref_log.read_text()[-3000:]
    one, nodes = final_weights(tmp_path / "one"), final_weights(run)
    for k in one:
        torch.testing.assert_close(nodes[k], one[k], rtol=1e-3, atol=2e-4, msg=lambda m: f"{k}: {m}")
