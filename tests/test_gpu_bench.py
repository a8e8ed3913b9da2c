"""benchmarks.gpu runs where only torch, torchvision, timm and numpy are installed (issue 11).

The check is run in a subprocess whose import system refuses ffcv, DALI, zarr, gradio and plotly
(a meta-path finder installed before anything else), at --tiny sizes on the CPU, so it cannot
silently depend on them.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("ffcv", "nvidia", "zarr", "gradio", "plotly", "runstore", "inspector", "numcodecs")

RUNNER = textwrap.dedent(f"""
    import importlib.abc, runpy, sys
    BLOCKED = {BLOCKED!r}

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is not installed on this box (blocked by the test)")
            return None

    sys.meta_path.insert(0, Refuse())
    for name in BLOCKED:
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"blocker failed: {{name}} imported")
    sys.argv = ["benchmarks.gpu"] + sys.argv[1:]
    try:
        runpy.run_module("benchmarks.gpu", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if e.code:
            raise
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
""")


def test_gpu_check_runs_tiny_on_cpu_without_the_optional_packages(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "-c", RUNNER, "--tiny", "--cpu", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and res["tiny"]
    for part in ("decode", "step_sdpa_bf16", "step_explicit_fp16", "loop"):
        assert res[part].get("images_per_s", 0) > 0, (part, res[part])
    assert res["decode"]["output"] == [8, 3, 64, 64] and res["decode"]["dtype"] == "torch.float32"
    assert res["step_explicit_fp16"]["attention"].startswith("explicit")
    assert "sdpa_bf16_speedup_over_explicit_fp16" in res and "decoder_outruns_step" in res
    assert 0 <= res["loop"]["data_share"] <= 1
