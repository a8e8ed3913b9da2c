"""`python -m evals.layers`: kNN and cached probe on every encoder block, for a checkpoint and its
random init. Real parts: the sample dataset as JPEG folders, a checkpoint written by the model's own
saver, the same loaders and heads as the other eval CLIs."""
from __future__ import annotations

import re

import torch

from model import create_model
from tests.test_evals_cli import TINY_MODEL, common, in_process, one_line_error, tiny  # noqa: F401 (fixtures)


def test_block_features_end_with_forward_features_and_pass_each_block_through_the_norm():
    torch.manual_seed(0)
    m = create_model("mae_vit_pico_patch8_64", **TINY_MODEL).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        blocks = m.block_features(x)
        assert len(blocks) == TINY_MODEL["depth"]
        assert torch.equal(blocks[-1], m.forward_features(x))
        # block 1: the embedded input through the first block, then the final norm
        assert torch.allclose(blocks[0], m.norm(m.blocks[0](m._embed_all(x))), atol=1e-6)


def _table_rows(stdout: str) -> list[list[float]]:
    return [[float(c) for c in line.strip("|").split("|")[1:]]
            for line in stdout.splitlines() if re.match(r"^\| \d+( \(last\))? \|", line)]


def test_one_row_per_block_and_the_last_is_what_evals_knn_reports(tiny, in_process, tmp_path):
    out = tmp_path / "layers.md"
    proc = in_process("layers", *common(tiny), "--probe-epochs", "2", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _table_rows(proc.stdout)
    assert len(rows) == TINY_MODEL["depth"] and all(len(r) == 4 for r in rows), proc.stdout
    assert "| 2 (last) |" in proc.stdout and "random init kNN" in proc.stdout
    assert out.read_text() in proc.stdout
    knn = in_process("knn", *common(tiny), "--run", "none")
    assert knn.returncode == 0, knn.stderr[-3000:]
    top1 = float(re.search(r"top1=([0-9.]+)", knn.stdout).group(1))
    assert rows[-1][0] == round(100 * top1, 1)


def test_without_random_init_only_the_checkpoint_is_measured(tiny, in_process):
    proc = in_process("layers", *common(tiny), "--probe-epochs", "1", "--no-random-init", "--pool", "avg")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "random init" not in proc.stdout and all(len(r) == 2 for r in _table_rows(proc.stdout))


def test_user_mistakes_are_one_line_and_exit_2(tiny, in_process, tmp_path):
    assert "--k 0" in one_line_error(in_process("layers", *common(tiny), "--k", "0"))
    missing = tmp_path / "nope.pth"
    assert str(missing) in one_line_error(in_process("layers", *common(tiny, ckpt=missing)))
    assert "--data" in one_line_error(in_process("layers", *common(tiny, data=tmp_path)))
