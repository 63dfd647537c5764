"""The benchmark scripts of bench/ run end to end (CPU smoke runs: tiny sizes, reference backend)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_profile_blocks_runs_on_cpu():
    cmd = [sys.executable, str(ROOT / "bench" / "profile_blocks.py"), "--device", "cpu", "--batch", "2",
           "--steps", "1", "--warmup", "1", "--blocks", "basic", "--modes", "infer,train", "--backends",
           "reference", "--dtype", "fp32", "--top", "1000"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr[-3000:]
    for label in ("basic infer eager", "basic infer fused[reference]", "basic train eager",
                  "basic train fused[reference]"):
        assert f"== {label}: " in out.stdout, out.stdout[-3000:]
    fused = out.stdout.split("== basic infer fused[reference]: ")[1].split("== ")[0]
    assert "fused_resnet::conv" in fused, "the fused block's own op is missing from its profile"
