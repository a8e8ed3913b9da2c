"""pipeline.bench: bare-library rows, per-back-end decode limits, the load-average gate, its caches."""
from __future__ import annotations

import pytest

from pipeline import bench


def result(load_start, load_end, ffcv=950.0, bare=1000.0, torch_rate=300.0, limit=1100.0):
    rows = {"torch": {"wall": torch_rate, "cpu": torch_rate},
            "ffcv": {"wall": ffcv, "cpu": ffcv, "x_bare": ffcv / bare},
            "ffcv_bare": {"wall": bare, "cpu": bare}}
    return {"load_start": (load_start, 0, 0), "load_end": (load_end, 0, 0), "rows": rows,
            "limits": {"stored_ffcv": {"limit": limit}, "originals_pil": {"limit": 500.0}}}


def test_no_goal_verdict_on_a_busy_machine():
    lines = bench.goals(result(1.5, 0.2))
    assert len(lines) == 1 and lines[0].startswith("no goal verdict") and "idle" in lines[0]


def test_the_bench_own_load_at_the_end_does_not_withhold_the_verdict():
    # two loader threads on a 2-core machine raise the 1-minute load to ~2 by the end on their own
    assert not bench.goals(result(0.3, 2.0))[0].startswith("no goal verdict")


def test_goal_verdicts_on_an_idle_machine():
    text = "\n".join(bench.goals(result(0.2, 0.4)))
    assert "ffcv >= 0.95x bare FFCV: yes (0.95x)" in text
    assert "decode+crop limit: yes (86%)" in text
    assert "best back end (ffcv) >= 2x torch: wall yes (3.17x), per CPU-second yes" in text
    assert "NO (0.50x)" in "\n".join(bench.goals(result(0.2, 0.4, ffcv=500.0)))


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--help"])
    text = capsys.readouterr().out
    options = [a for a in bench.parse_args([]).__dict__]
    assert text.count("(default") >= len(options) - 1, text   # every option but --help
    assert "--cache" in text and str(bench.DEFAULT_CACHE) in text.replace("\n", "").replace(" ", "") \
        or "maepipe" in text


def test_unknown_row_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(["--rows", "torch,fcv"])
    assert e.value.code == 2 and "unknown fcv" in capsys.readouterr().err


def tiny_bench(tmp_path, capsys, rows):
    from pipeline.sample import make_sample_dataset
    make_sample_dataset(tmp_path / "src", image_size=48, train_per_class=1, val_per_class=1,
                        num_workers=1, progress=False)
    cache = tmp_path / "cache"
    rc = bench.main(["--data", str(tmp_path / "src"), "--cache", str(cache), "--rows", ",".join(rows),
                     "--rounds", "1", "--epochs", "1", "--batch-size", "4", "--image-size", "32",
                     "--workers", "1", "--decode-seconds", "0.1", "--decode-files", "5",
                     "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr()
    assert rc == 0
    assert f"go to {cache}" in out.err
    for row in rows:
        assert any(line.startswith(row + " ") for line in out.out.splitlines()), out.out
    assert "load average at start" in out.out
    return cache, out.out


def test_tiny_bench_torch_and_dali_beside_bare_dali(tmp_path, capsys):
    _, text = tiny_bench(tmp_path, capsys, ["torch", "dali", "dali_bare"])
    assert "dali / dali_bare per round" in text and "PIL full decode of the original JPEGs" in text


@pytest.mark.slow  # two FFCV JIT compiles; `python -m pipeline.bench` runs the same rows
def test_tiny_bench_ffcv_beside_bare_ffcv(tmp_path, capsys):
    cache, text = tiny_bench(tmp_path, capsys, ["ffcv", "ffcv_bare"])
    assert list(cache.glob("ffcv-*/train.beton"))
    assert "ffcv / ffcv_bare per round" in text
    assert "FFCV decode + crop-resize of the JPEGs stored in the .beton" in text
