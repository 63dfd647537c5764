"""The command line (python -m fused_resnet info/check/bench) and fused_resnet.benchmark helpers.

``python -m fused_resnet info`` runs as a subprocess (it exercises __main__);
the other commands run in-process through ``main(argv)``. Both run without
TRITON_INTERPRET (conftest sets it on a CPU-only machine, and backend="auto"
would then interpret the Triton kernels on the CPU, far too slowly for whole
models), so on the CPU they use the reference backend.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from fused_resnet import benchmark as B

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, timeout=240):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.run([sys.executable, "-m", "fused_resnet", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _show(p) -> str:
    return f"rc={p.returncode}\n--- stdout\n{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-4000:]}"


# ---------------------------------------------------------------- CLI, end to end


def test_info():
    p = run_cli("info")
    assert p.returncode == 0, _show(p)
    out = p.stdout
    for key in ("fused_resnet", "torch", "torchvision", "triton", "CUDA runtime", "GPU", "_C extension",
                "backends:", "reference", "triton", "cuda", "auto backend"):
        assert key in out, f"{key!r} missing from info output:\n{out}"
    auto = [line for line in out.splitlines() if line.startswith("auto backend")]
    assert auto and "could not be determined" not in auto[0], out
    if not torch.cuda.is_available():
        assert "GPU               none" in out or "GPU  " in out
        assert auto[0].rstrip().endswith("reference"), auto


@pytest.fixture
def no_interpret(monkeypatch):
    """In-process CLI runs: without TRITON_INTERPRET, backend="auto" picks reference on the CPU."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def test_info_json(no_interpret, capsys):
    from fused_resnet.cli import main

    assert main(["info", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {"torch", "torchvision", "gpu", "extension", "backends", "auto"} <= set(d)
    ext = d["extension"]
    assert (ext["built_with"] is not None) == ext["built"], ext
    if ext["built"]:
        assert any(k.startswith("fprop_prologue_bf16") for k in ext["built_with"]["cutlass_kernels"]), ext
    assert set(d["backends"]) >= {"reference", "triton", "cuda"}
    assert d["backends"]["reference"]["available"] is True
    assert all(v["error"] is None for v in d["auto"].values()), d["auto"]


def test_check_cifar_resnet20_train(no_interpret, capsys, tmp_path):
    from fused_resnet.cli import main

    path = tmp_path / "check.json"
    rc = main(["check", "--model", "cifar_resnet20", "--train", "-q", "--json", str(path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "PASS" in out
    for key in ("layer1.0", "layer3.2", "logits", "input", "param.grad", "replay.dx", "running_var"):
        assert key in out, key
    d = json.loads(path.read_text())
    assert d["ok"] is True and d["header"]["mode"] == "train" and d["backends"] == {"reference": 9}
    groups = {i["group"] for i in d["items"]}
    assert {"block", "logits", "running_mean", "running_var", "num_batches", "replay.out", "replay.dx",
            "replay.grad", "input.grad", "param.grad"} <= groups


def test_check_resnet18(no_interpret, capsys):
    from fused_resnet.cli import main

    rc = main(["check", "--model", "resnet18", "--batch", "2", "-q"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "PASS" in out and "layer4.1" in out and "resnet18 eval fp32 batch 2 64x64" in out


def test_bench_cifar_json(no_interpret, capsys, tmp_path):
    from fused_resnet.cli import main

    path = tmp_path / "out" / "bench.json"
    rc = main(["bench", "--model", "cifar_resnet20", "--steps", "1", "--warmup", "0", "--json", str(path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "img/s" in out and "eager" in out and "fused" in out
    d = json.loads(path.read_text())
    assert {"command", "date", "device", "env", "config", "results", "note"} <= set(d)
    assert d["command"].startswith("fused-resnet bench --model cifar_resnet20")
    for k in ("torch", "torchvision", "triton", "cuda_runtime", "gpu", "python", "fused_resnet"):
        assert k in d["env"], k
    assert d["config"]["model"] == "cifar_resnet20" and d["config"]["mode"] == "infer"
    rows = {r["variant"]: r for r in d["results"]}
    assert set(rows) == {"eager", "fused"}
    for r in rows.values():
        assert "error" not in r, r.get("error")
        assert r["img_per_s"] > 0 and r["median_ms"] > 0 and len(r["samples_ms"]) == 1
    assert rows["fused"]["blocks"] == 9
    if not torch.cuda.is_available():
        assert d["device"] == "cpu" and "CPU" in d["note"]
        assert rows["fused"]["backend"] == "reference"
        assert "CPU numbers say nothing about GPU speed" in out


# ---------------------------------------------------------------- helpers


def test_model_spec():
    s = B.model_spec("cifar_resnet56")
    assert (s.kind, s.image_size, s.num_classes) == ("cifar", 32, 10)
    assert s.cifar == dict(depth=56, version=1, shortcut="A", plain=False, num_classes=10)
    assert B.model_spec("cifar_resnet20_v2_B").cifar == dict(depth=20, version=2, shortcut="B", plain=False,
                                                             num_classes=10)
    assert B.model_spec("cifar_preact_resnet110").cifar["version"] == 2
    assert B.model_spec("cifar_plain20").cifar["plain"] is True
    s = B.model_spec("wide_resnet50_2")
    assert (s.kind, s.image_size, s.num_classes) == ("imagenet", 224, 1000)
    with pytest.raises(ValueError, match="unknown model"):
        B.model_spec("resnet51")


def test_build_model_is_seeded():
    a, b = B.build_model("cifar_resnet20", seed=3), B.build_model("cifar_resnet20", seed=3)
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n
    c = B.build_model("cifar_resnet20", seed=4)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_parse_dtype():
    assert B.parse_dtype("bf16") is torch.bfloat16 and B.parse_dtype("FP16") is torch.float16
    assert B.parse_dtype("float32") is torch.float32 and B.dtype_name(torch.bfloat16) == "bf16"
    with pytest.raises(ValueError):
        B.parse_dtype("int8")


def test_time_fn_counts_and_median():
    calls = []
    t = B.time_fn(lambda: calls.append(1), device=torch.device("cpu"), warmup=2, steps=5, show=False)
    assert len(calls) == 7 and len(t.samples_ms) == 5
    d = t.as_dict()
    assert d["steps"] == 5 and d["min_ms"] <= d["median_ms"] <= d["max_ms"]
    assert B.median([3.0, 1.0, 2.0]) == 2.0 and B.median([1.0, 2.0, 3.0, 10.0]) == 2.5


def test_format_table():
    text = B.format_table(["a", "bb"], [["x", 1.5], ["yy", None], ["z", True]])
    lines = text.splitlines()
    assert len(lines) == 5 and lines[0].split() == ["a", "bb"]
    assert lines[2].split() == ["x", "1.50"] and lines[3].split() == ["yy", "-"] and lines[4].split() == ["z", "ok"]


@pytest.mark.parametrize("values, fmt", [([80.8, 56.97], ".2f"), ([1.0, 0.7349], ".2f"), ([21480.3, 13.0], ".1f"),
                                         ([0.0, 3e-7, 1.5], ".2e"), ([2e5, 1.0], ".2e"), ([None, 3, "x"], ".2f")])
def test_column_format(values, fmt):
    assert B.column_format(values) == fmt


def _decimals(cell: str) -> int:
    return len(cell.split(".")[1]) if "." in cell else 0


def test_results_table_one_format_per_column():
    """Every number of a column has as many decimals as the others (was 80.8 beside 56.97, 1 beside 0.7349)."""
    rows = [dict(model="m", mode="infer", variant=v, batch=2, dtype="fp32", backend=b, median_ms=ms, img_per_s=ips,
                 speedup_vs_eager=x, peak_GB=None)
            for v, b, ms, ips, x in [("eager", "torch", 80.8, 24.75, 1.0), ("fused", "reference", 56.97, 35.1, 0.7349)]]
    lines = B.results_table(rows).splitlines()
    cells = [line.split() for line in lines[2:]]
    for col in (6, 7, 8):
        assert len({_decimals(c[col]) for c in cells}) == 1, lines
    assert cells[0][6:9] == ["80.80", "24.75", "1.00"] and cells[1][6:9] == ["56.97", "35.10", "0.73"], lines


def test_flops_and_weight_bytes():
    from torchvision.models.resnet import Bottleneck

    blk = Bottleneck(256, 64)
    # 1x1 256->64, 3x3 64->64, 1x1 64->256 at 56x56: MACs per pixel 16384 + 36864 + 16384
    assert B.conv_flops(blk, (2, 256, 56, 56)) == 2 * 2 * 56 * 56 * (16384 + 36864 + 16384)
    # conv weights in bf16 + one fp32 folded bias per BN channel (64 + 64 + 256)
    assert B.weight_bytes(blk, torch.bfloat16) == 2 * (16384 + 36864 + 16384) + 4 * (64 + 64 + 256)


def test_calibrate_and_perturb_batchnorm():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.3))
    B.perturb_batchnorm(m, seed=1)
    bn = m[1]
    assert not torch.equal(bn.weight, torch.ones(4)) and not torch.equal(bn.running_var, torch.ones(4))
    m.eval()
    x = torch.randn(8, 3, 10, 10) * 3 + 2
    B.calibrate_batchnorm(m, x)
    assert not m.training and bn.momentum == 0.3 and bn.num_batches_tracked.item() == 0
    y = m[0](x)
    torch.testing.assert_close(bn.running_mean, y.mean((0, 2, 3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_var, y.var((0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-5)


def test_bench_model_records_failures_and_speedups():
    rows = B.bench_model("cifar_resnet20", mode="train", variants=["eager"], batch=2, dtype=torch.float32,
                         device=torch.device("cpu"), steps=1, warmup=0, show=False)
    assert len(rows) == 1 and rows[0]["speedup_vs_eager"] == 1.0 and rows[0]["backend"] == "torch"
    rows = B.bench_model("cifar_resnet20", mode="infer", variants=["fused"], batch=2, dtype=torch.float32,
                         device=torch.device("cpu"), steps=1, warmup=0, backend="no_such_backend", show=False)
    assert "error" in rows[0] and "no_such_backend" in rows[0]["error"]
    assert "FAILED" in B.results_table(rows)


# ---------------------------------------------------------------- the check must catch wrong numbers


@pytest.mark.parametrize("op, where", [("conv", "forward"), ("conv_backward", "dx")])
def test_parity_catches_small_errors(monkeypatch, op, where):
    from fused_resnet import backends

    ref = backends.BACKENDS["reference"]
    orig = getattr(ref, op)

    def wrong(*args, **kwargs):
        out = list(orig(*args, **kwargs))
        if out[0].numel():
            out[0] = out[0] * (1 + 1e-3)  # 0.1%: far below what a loose check would notice
        return tuple(out)

    monkeypatch.setattr(ref, op, wrong)
    r = B.run_parity("cifar_resnet20", batch=2, backend="reference", show=False)
    assert not r.ok
    failed = {i.group for i in r.failures}
    expected = {"forward": {"block", "replay.out"}, "dx": {"replay.dx"}}[where]
    assert expected <= failed, (failed, B.parity_table(r))


def test_cli_main_in_process_errors(capsys):
    from fused_resnet.cli import main

    assert main(["check", "--model", "not_a_model", "-q"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["bench", "--model", "resnet51", "-q"]) == 2
    assert "unknown model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--train", "--infer"])
