"""The command line (python -m fused_resnet info/check/bench) and the fused_resnet.tools it runs.

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

from fused_resnet.tolerance import LOWP_ATOL, WHOLE_MODEL_GRAD_ATOL, bound_2x, max_err, rel_err
from fused_resnet.tools import parity, timing
from fused_resnet.tools.env import dtype_name, parse_dtype
from fused_resnet.tools.models import build_model, calibrate_batchnorm, model_spec, perturb_batchnorm
from fused_resnet.tools.parity import parity_table, run_parity
from fused_resnet.tools.report import column_format, format_table
from fused_resnet.tools.timing import bench_model, median, results_table, time_fn
from fused_resnet.tools.traffic import conv_flops, weight_bytes

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

    path, chart = tmp_path / "check.json", tmp_path / "check.svg"
    rc = main(["check", "--model", "cifar_resnet20", "--train", "-q", "--json", str(path), "--plot", str(chart)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "PASS" in out
    assert chart.read_text().lstrip().startswith("<?xml") and "replay.dx" in chart.read_text()
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
    s = model_spec("cifar_resnet56")
    assert (s.kind, s.image_size, s.num_classes) == ("cifar", 32, 10)
    assert s.cifar == dict(depth=56, version=1, shortcut="A", plain=False, num_classes=10)
    assert model_spec("cifar_resnet20_v2_B").cifar == dict(depth=20, version=2, shortcut="B", plain=False,
                                                             num_classes=10)
    assert model_spec("cifar_preact_resnet110").cifar["version"] == 2
    assert model_spec("cifar_plain20").cifar["plain"] is True
    s = model_spec("wide_resnet50_2")
    assert (s.kind, s.image_size, s.num_classes) == ("imagenet", 224, 1000)
    with pytest.raises(ValueError, match="unknown model"):
        model_spec("resnet51")


def test_build_model_is_seeded():
    a, b = build_model("cifar_resnet20", seed=3), build_model("cifar_resnet20", seed=3)
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n
    c = build_model("cifar_resnet20", seed=4)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_parse_dtype():
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("FP16") is torch.float16
    assert parse_dtype("float32") is torch.float32 and dtype_name(torch.bfloat16) == "bf16"
    with pytest.raises(ValueError):
        parse_dtype("int8")


def test_time_fn_counts_and_median():
    calls = []
    t = time_fn(lambda: calls.append(1), device=torch.device("cpu"), warmup=2, steps=5, show=False)
    assert len(calls) == 7 and len(t.samples_ms) == 5
    d = t.as_dict()
    assert d["steps"] == 5 and d["min_ms"] <= d["median_ms"] <= d["max_ms"]
    assert median([3.0, 1.0, 2.0]) == 2.0 and median([1.0, 2.0, 3.0, 10.0]) == 2.5


def test_format_table():
    text = format_table(["a", "bb"], [["x", 1.5], ["yy", None], ["z", True]])
    lines = text.splitlines()
    assert len(lines) == 5 and lines[0].split() == ["a", "bb"]
    assert lines[2].split() == ["x", "1.50"] and lines[3].split() == ["yy", "-"] and lines[4].split() == ["z", "ok"]


@pytest.mark.parametrize("values, fmt", [([80.8, 56.97], ".2f"), ([1.0, 0.7349], ".2f"), ([21480.3, 13.0], ".1f"),
                                         ([0.0, 3e-7, 1.5], ".2e"), ([2e5, 1.0], ".2e"), ([None, 3, "x"], ".2f")])
def test_column_format(values, fmt):
    assert column_format(values) == fmt


def _decimals(cell: str) -> int:
    return len(cell.split(".")[1]) if "." in cell else 0


def test_results_table_one_format_per_column():
    """Every number of a column has as many decimals as the others (was 80.8 beside 56.97, 1 beside 0.7349)."""
    rows = [dict(model="m", mode="infer", variant=v, batch=2, dtype="fp32", backend=b, median_ms=ms, img_per_s=ips,
                 speedup_vs_eager=x, peak_GB=None)
            for v, b, ms, ips, x in [("eager", "torch", 80.8, 24.75, 1.0), ("fused", "reference", 56.97, 35.1, 0.7349)]]
    lines = results_table(rows).splitlines()
    cells = [line.split() for line in lines[2:]]
    for col in (6, 7, 8):
        assert len({_decimals(c[col]) for c in cells}) == 1, lines
    assert cells[0][6:9] == ["80.80", "24.75", "1.00"] and cells[1][6:9] == ["56.97", "35.10", "0.73"], lines


def test_flops_and_weight_bytes():
    from torchvision.models.resnet import Bottleneck

    blk = Bottleneck(256, 64)
    # 1x1 256->64, 3x3 64->64, 1x1 64->256 at 56x56: MACs per pixel 16384 + 36864 + 16384
    assert conv_flops(blk, (2, 256, 56, 56)) == 2 * 2 * 56 * 56 * (16384 + 36864 + 16384)
    # conv weights in bf16 + one fp32 folded bias per BN channel (64 + 64 + 256)
    assert weight_bytes(blk, torch.bfloat16) == 2 * (16384 + 36864 + 16384) + 4 * (64 + 64 + 256)


def test_calibrate_and_perturb_batchnorm():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.3))
    perturb_batchnorm(m, seed=1)
    bn = m[1]
    assert not torch.equal(bn.weight, torch.ones(4)) and not torch.equal(bn.running_var, torch.ones(4))
    m.eval()
    x = torch.randn(8, 3, 10, 10) * 3 + 2
    calibrate_batchnorm(m, x)
    assert not m.training and bn.momentum == 0.3 and bn.num_batches_tracked.item() == 0
    y = m[0](x)
    torch.testing.assert_close(bn.running_mean, y.mean((0, 2, 3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_var, y.var((0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-5)


def test_bench_model_records_failures_and_speedups():
    rows = bench_model("cifar_resnet20", mode="train", variants=["eager"], batch=2, dtype=torch.float32,
                         device=torch.device("cpu"), steps=1, warmup=0, show=False)
    assert len(rows) == 1 and rows[0]["speedup_vs_eager"] == 1.0 and rows[0]["backend"] == "torch"
    rows = bench_model("cifar_resnet20", mode="infer", variants=["fused"], batch=2, dtype=torch.float32,
                         device=torch.device("cpu"), steps=1, warmup=0, backend="no_such_backend", show=False)
    assert "error" in rows[0] and "no_such_backend" in rows[0]["error"]
    assert "FAILED" in results_table(rows)


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
    r = run_parity("cifar_resnet20", batch=2, backend="reference", show=False)
    assert not r.ok
    failed = {i.group for i in r.failures}
    expected = {"forward": {"block", "replay.out"}, "dx": {"replay.dx"}}[where]
    assert expected <= failed, (failed, parity_table(r))


def _check_rule(dtype: str) -> parity.Rule:
    """The rule ``fused-resnet check --dtype DTYPE`` judges by, its options at their defaults."""
    from fused_resnet.cli import _check_plan, build_parser

    plan = _check_plan(build_parser().parse_args(["check", "--model", "cifar_resnet20", "--dtype", dtype]))
    return parity.check_rule(plan["dtype"], direct=plan["direct"], rtol=plan["rtol"], atol=plan["atol"],
                             lowp_atol=plan["lowp_atol"])


def _verdict(assertion, *args, **kwargs) -> bool:
    try:
        assertion(*args, **kwargs)
    except AssertionError:
        return False
    return True


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_check_and_the_tests_judge_alike_near_the_bound(no_interpret, dtype):
    """One element of a tensor of scale 8 moved across the 2x rule's bound, step by step (and a
    whole-model gradient's relative error across its bound): the check passes exactly the
    tensors that the tests' assertions pass (the tensor's scale and its group's enter neither)."""
    from helpers import assert_rel_within_2x, assert_within_2x

    rule, torch_dtype = _check_rule(dtype), parse_dtype(dtype)
    ref = torch.randn(256, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 8
    plain = ref.to(torch_dtype)
    bound = bound_2x(max_err(plain, ref), LOWP_ATOL[torch_dtype])
    verdicts = set()
    for shift in torch.linspace(0, 2 * bound, 41).tolist():
        fused = plain.clone()
        fused[0] = ref[0] + shift
        ours = _verdict(assert_within_2x, fused, plain, ref)
        assert rule.judge_max("block", "t", fused, plain, ref, 8.0, 32.0).ok == ours, (shift, bound)
        verdicts.add(ours)
    assert verdicts == {True, False}
    bound = bound_2x(rel_err(plain, ref), WHOLE_MODEL_GRAD_ATOL)
    verdicts = set()
    for eps in torch.linspace(0, 2 * bound, 41).tolist():
        fused = ref * (1 + eps)
        ours = _verdict(assert_rel_within_2x, fused, plain, ref, atol=WHOLE_MODEL_GRAD_ATOL)
        assert rule.judge_rel("param.grad", "t", fused, plain, ref).ok == ours, (eps, bound)
        verdicts.add(ours)
    assert verdicts == {True, False}


# ---------------------------------------------------------------- arguments, output files, help, info


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if a benchmark or a parity check starts."""
    def refuse(*args, **kwargs):
        raise AssertionError("the work started although an argument was refused")

    monkeypatch.setattr(timing, "bench_model", refuse)
    monkeypatch.setattr(parity, "run_parity", refuse)


BAD_ARGUMENTS = [
    # (arguments, what the error must say: the argument, what was given, what is allowed)
    (["bench", "--backend", "cudaa"], ["argument --backend", "'cudaa'", "auto, reference, triton, cuda"]),
    (["bench", "--backend", "reference,cudaa"], ["argument --backend", "'reference,cudaa'", "comma-separated"]),
    (["bench", "--batch", "0"], ["argument --batch", "'0'", "a positive integer"]),
    (["bench", "--batch", "-3"], ["argument --batch", "'-3'", "a positive integer"]),
    (["check", "--batch", "two"], ["argument --batch", "'two'", "a positive integer"]),
    (["bench", "--image-size", "0"], ["argument --image-size", "'0'", "a positive integer"]),
    (["bench", "--steps", "0"], ["argument --steps", "'0'", "a positive integer"]),
    (["bench", "--warmup", "-1"], ["argument --warmup", "'-1'", "a non-negative integer"]),
    (["bench", "--seed", "-1"], ["argument --seed", "'-1'", "an integer from 0 to"]),
    (["bench", "--device", "gpu"], ["argument --device", "'gpu'", "auto, cpu, cuda or cuda:N"]),
    (["bench", "--device", "cuda:99"], ["argument --device", "'cuda:99'", "visible CUDA GPU"]),
    (["bench", "--model", "resnet51"], ["argument --model", "'resnet51'", "cifar_resnet<depth>"]),
    (["check", "--model", "alexnet"], ["argument --model", "alexnet", "BasicBlock and Bottleneck"]),
    (["bench", "--model", "cifar_resnet21"], ["argument --model", "got 21", "6n+2"]),
    (["bench", "--model", "cifar_resnet20", "--image-size", "64"], ["argument --image-size", "got 64", "32x32"]),
    (["bench", "--train", "--batch", "1", "--image-size", "32"],
     ["arguments --batch/--image-size", "a batch of 1 32x32 images", "more than 1 value per channel"]),
    (["bench", "--compile-mode", "max-autotune"], ["argument --compile-mode", "'max-autotune'", "--compile only"]),
    (["bench", "--compile", "--compile-mode", "fast"], ["argument --compile-mode", "'fast'", "reduce-overhead"]),
    (["check", "--dtype", "bf16", "--rtol", "1e-3"], ["--rtol", "bf16", "--lowp-atol"]),
    (["check", "--lowp-atol", "0.1"], ["argument --lowp-atol", "fp32", "fp16/bf16 only"]),
    (["check", "--atol", "-1"], ["argument --atol", "'-1'", "a non-negative number"]),
    (["bench", "--plot", "chart.txt"], ["argument --plot", "'chart.txt'", ".png"]),
]


@pytest.mark.parametrize("argv, says", BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_arguments_are_refused_before_any_work(no_interpret, no_work, capsys, argv, says):
    from fused_resnet.cli import main

    assert main([*argv, "-q"]) == 2
    err = capsys.readouterr().err
    for s in says:
        assert s in err, (s, err)
    assert err.startswith(f"usage: fused-resnet {argv[0]}"), err


def test_output_paths_are_refused_before_any_work(no_interpret, no_work, capsys, tmp_path):
    from fused_resnet.cli import main

    assert main(["bench", "--json", str(tmp_path)]) == 2
    assert "argument --json: expected a file path, got the directory" in capsys.readouterr().err
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert main(["check", "--json", str(blocked / "report.json")]) == 2
    assert "argument --json" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU serves these backends")
@pytest.mark.parametrize("backend, why", [("cuda", "no CUDA GPU is visible"), ("triton", "TRITON_INTERPRET=1")])
def test_unusable_backend_is_refused_with_its_reason(no_interpret, no_work, capsys, backend, why):
    from fused_resnet.cli import main

    assert main(["bench", "--backend", backend]) == 2
    err = capsys.readouterr().err
    assert f"argument --backend: '{backend}' cannot run fp32 on cpu" in err and why in err, err


def test_plot_without_matplotlib_names_the_package(no_interpret, no_work, monkeypatch, capsys):
    from fused_resnet.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main(["bench", "--plot", "chart.png"]) == 2
    err = capsys.readouterr().err
    assert "argument --plot: charts need the matplotlib package" in err and "pip install matplotlib" in err, err


def _break_reference_conv(monkeypatch, make_wrong):
    from fused_resnet import backends

    ref = backends.BACKENDS["reference"]
    monkeypatch.setattr(ref, "conv", make_wrong(ref.conv))


def test_failed_bench_keeps_the_earlier_result(no_interpret, monkeypatch, capsys, tmp_path):
    """A run with a failed variant exits 1, writes NAME.failed.json and .failed.png, and shows the
    whole error under the table; the earlier result files stay as they were."""
    from fused_resnet.cli import failed_path, main

    def raising(conv):
        def wrong(*args, **kwargs):
            raise RuntimeError("the reference conv is broken on purpose, with a message longer than sixty characters")
        return wrong

    _break_reference_conv(monkeypatch, raising)
    path, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    path.write_text("earlier")
    chart.write_text("earlier")
    rc = main(["bench", "--model", "cifar_resnet20", "--steps", "1", "--warmup", "0", "-q", "--json", str(path),
               "--plot", str(chart)])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert path.read_text() == "earlier" and chart.read_text() == "earlier"
    rows = {r["variant"]: r for r in json.loads(open(failed_path(str(path))).read())["results"]}
    assert "broken on purpose" in rows["fused"]["error"] and "error" not in rows["eager"]
    assert open(failed_path(str(chart)), "rb").read(4) == b"\x89PNG"
    assert "fused FAILED: RuntimeError: the reference conv is broken on purpose, with a message longer than sixty " \
           "characters" in out, out
    assert f"the run failed: wrote its results to {failed_path(str(path))}; {path} is left as it was" in out


def test_failed_check_keeps_the_earlier_report(no_interpret, monkeypatch, capsys, tmp_path):
    from fused_resnet.cli import failed_path, main

    def off_by_a_percent(conv):
        def wrong(*args, **kwargs):
            out = list(conv(*args, **kwargs))
            out[0] = out[0] * 1.01
            return tuple(out)
        return wrong

    _break_reference_conv(monkeypatch, off_by_a_percent)
    path = tmp_path / "check.json"
    path.write_text("earlier")
    assert main(["check", "--model", "cifar_resnet20", "-q", "--json", str(path)]) == 1
    assert "FAIL:" in capsys.readouterr().out
    assert path.read_text() == "earlier"
    assert json.loads(open(failed_path(str(path))).read())["ok"] is False


def test_quiet_bench_prints_nothing_on_stderr_and_draws_its_chart(no_interpret, capsys, tmp_path, monkeypatch):
    from fused_resnet.cli import main

    monkeypatch.delenv("FUSED_RESNET_QUIET", raising=False)
    chart = tmp_path / "bench.png"
    rc = main(["bench", "--model", "cifar_resnet20", "--steps", "1", "--warmup", "0", "-q",
               "--json", str(tmp_path / "bench.json"), "--plot", str(chart)])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    assert err == ""
    assert chart.read_bytes()[:4] == b"\x89PNG" and f"wrote {chart}" in out
    assert "FUSED_RESNET_QUIET" not in os.environ  # -q sets it for its own run only


def test_help_is_plain_text_with_the_program_name(capsys):
    from fused_resnet.cli import main

    p = run_cli("--help")
    assert p.returncode == 0 and p.stdout.startswith("usage: python -m fused_resnet "), _show(p)
    texts = [p.stdout]
    for command in ("info", "check", "bench"):
        assert main([command, "--help"]) == 0
        texts.append(capsys.readouterr().out)
        assert texts[-1].startswith(f"usage: fused-resnet {command}"), texts[-1]
    for text in texts:
        assert "``" not in text, text


def test_info_prints_what_it_knows_before_probing(no_interpret, monkeypatch, capsys):
    """Versions, the extension and the backends are out before the (on a GPU, slow) probe of the
    auto backend starts, and the probe says on stderr what it is doing before it runs."""
    from fused_resnet import cli

    seen = []

    def probe(device, dtype):
        seen.append(capsys.readouterr())
        return "reference", None

    monkeypatch.setattr(cli, "_probe_auto", probe)
    assert cli.main(["info"]) == 0
    before = seen[0]
    for key in ("torch", "torchvision", "_C extension", "backends:", "reference"):
        assert key in before.out, before.out
    assert "auto backend" not in before.out
    assert "[fused-resnet] info: running one ResNet-50 bottleneck with backend='auto'" in before.err, before.err
    assert "auto backend (" in capsys.readouterr().out
