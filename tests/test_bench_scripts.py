"""The benchmark scripts of bench/ run end to end (CPU smoke runs: tiny sizes, reference backend)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import load_bench_script

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


def test_profile_models_splits_a_batch_by_part(tmp_path):
    """Every top-level module and every block of a stage is a part of the profile, each variant's
    parts are timed, and the parts account for the batch (CPU smoke run: operator times)."""
    import json

    out_json = tmp_path / "parts.json"
    cmd = [sys.executable, str(ROOT / "bench" / "profile_models.py"), "--device", "cpu", "--models",
           "cifar_resnet20", "--batch", "2", "--steps", "1", "--warmup", "1", "--backends", "reference",
           "--json", str(out_json)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    eager, fused = json.loads(out_json.read_text())["models"]["cifar_resnet20"]
    assert (eager["variant"], fused["variant"]) == ("eager", "fused[reference]")
    blocks = [f"{stage}.{i}" for stage in ("layer1", "layer2", "layer3") for i in range(3)]
    for r in (eager, fused):
        assert set(blocks + ["conv1", "bn1", "fc"]) <= set(r["parts"]), sorted(r["parts"])
        assert all(ms > 0 for name, (ms, _) in r["parts"].items() if name in blocks), r["parts"]
    assert "sum of the parts" in out.stdout and "layer2.0" in out.stdout


@pytest.mark.parametrize("script,args", [
    ("bench_models.py", ["--models", "cifar_resnet20", "--modes", "infer", "--backend", "reference"]),
    ("bench_blocks.py", ["--blocks", "basic", "--modes", "infer", "--backends", "reference", "--batch", "2",
                         "--steps", "1", "--warmup", "1", "--no-compile"]),
])
def test_bench_scripts_draw_their_table(tmp_path, script, args):
    """--plot draws the measured table as a PNG next to the JSON (CPU smoke run)."""
    png = tmp_path / "chart.png"
    cmd = [sys.executable, str(ROOT / "bench" / script), "--device", "cpu", "--json", str(tmp_path / "r.json"),
           "--plot", str(png), "-q", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"


def test_bench_models_graph_variants_need_a_gpu(tmp_path):
    """--graphs adds the CUDA-graph variants (inference and training); off the GPU each is a row
    saying why it could not run (so the script exits 1), and the other variants still run."""
    import json

    out_json = tmp_path / "models.json"
    cmd = [sys.executable, str(ROOT / "bench" / "bench_models.py"), "--device", "cpu", "--models",
           "cifar_resnet20", "--modes", "infer,train", "--graphs", "--backend", "reference", "--json", str(out_json),
           "-q"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    rows = json.loads(out_json.read_text())["results"]
    by = {(r["mode"], r["variant"]): r for r in rows}
    modes, plain, graphs = ("infer", "train"), ("eager", "fused"), ("eager+graphs", "fused+graphs")
    assert set(by) == {(m, v) for m in modes for v in plain + graphs}, sorted(by)
    for key in ((m, v) for m in modes for v in graphs):
        assert "they need a CUDA device, not cpu" in by[key]["error"], by[key]
    for key in (("infer", "eager"), ("infer", "fused"), ("train", "eager"), ("train", "fused")):
        assert by[key].get("img_per_s") and not by[key].get("error"), by[key]


def test_host_overhead_counts_the_kernels_of_a_step(tmp_path):
    """host_overhead.py runs every variant; on the triton backend a training step's BatchNorm
    bookkeeping (finalize, running update and their gradients) is Triton launches, not chains
    of small PyTorch kernels: the PyTorch kernels left per step stay few."""
    import json

    out_json = tmp_path / "host.json"
    cmd = [sys.executable, str(ROOT / "bench" / "host_overhead.py"), "--steps", "2", "--repeat", "1",
           "--json", str(out_json)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out_json.read_text())["rows"]
    assert len(rows) == 3 * 2 * 3, [(r["block"], r["mode"], r["variant"]) for r in rows]
    for r in rows:
        assert r["us_per_step"] > 0, r
        if r["variant"] == "triton-host" and r["mode"] == "train":
            assert r["triton_launches_per_step"] > 0, r
            assert r["aten_kernels_per_step"] <= 16, r
            assert not {"mul", "rsqrt", "pow", "div"} & set(r["aten_kernels"]), r


def test_kernel_resources_reads_a_compiled_kernel(tmp_path):
    """kernel_resources.py compiles a specialisation for sm_90 (no GPU needed) and reports its
    registers, stack and shared memory."""
    import json

    out_json = tmp_path / "res.json"
    cmd = [sys.executable, str(ROOT / "bench" / "kernel_resources.py"), "--filter", "sum_partials,bn_finalize_11",
           "--json", str(out_json)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = {r["name"]: r for r in json.loads(out_json.read_text())["rows"]}
    # The filter matches substrings: sum_partials_chunks (the first level of a two-level sum) too.
    assert set(rows) == {"sum_partials", "sum_partials_chunks", "bn_finalize_11"}, rows
    for r in rows.values():
        assert 0 < r["regs"] <= 255 and r["stack"] >= 0 and r["shared"] >= 0, r
        assert r["mma"] == "-", r  # reductions: no matrix instruction


def test_kernel_resources_names_the_matrix_instructions(monkeypatch):
    # The script unsets TRITON_INTERPRET when it loads (it compiles for the GPU target): the
    # variable comes back after the test, for the interpreter tests that follow.
    monkeypatch.setenv("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "1"))
    kr = load_bench_script("kernel_resources")
    assert kr.mma_kind("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 ...") == "wgmma"
    assert kr.mma_kind("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 ...") == "mma.sync"
    assert kr.mma_kind("ld.global.v4.b32 ...") == "-"


def test_kernel_resources_reads_the_cuda_extension(tmp_path):
    """--cuda-ext reads every kernel of the built _C, each CUTLASS convolution named by family,
    element type and tile, for every architecture compiled in."""
    import json

    from fused_resnet import _ext

    ok, reason = _ext.status()
    if not ok:
        pytest.skip(f"fused_resnet._C is not built: {reason} (tests/cuda/test_extension.py says whether it should be)")
    import fused_resnet._C as C

    out_json = tmp_path / "cuda.json"
    cmd = [sys.executable, str(ROOT / "bench" / "kernel_resources.py"), "--cuda-ext", "--json", str(out_json)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = json.loads(out_json.read_text())["rows"]
    archs = {int(a.replace(".", "")) for a in C.built_with()["arch_list"]}
    assert {r["arch"] for r in rows} == archs, rows[:3]
    cutlass = C.built_with()["cutlass_kernels"]
    for arch in archs:
        names = [r["name"] for r in rows if r["arch"] == arch]
        assert sorted(n for n in names if n in cutlass) == sorted(cutlass), (arch, names)
    for r in rows:
        assert not r["name"].startswith("_Z"), f"a kernel of _C was not named: {r['name'][:200]}"
        assert 0 < r["regs"] <= 255 and r["stack"] >= 0 and r["shared"] >= 0, r


def test_host_overhead_cuda_variant_counts_calls_into_the_extension(tmp_path):
    """The cuda-host variant runs the cuda backend's Python with _C's ops counted: a bottleneck
    training step reaches the extension for its convolutions, their fused data gradients and the
    BatchNorm pieces, and launches only a few PyTorch kernels itself."""
    import json

    from fused_resnet import _ext

    ok, reason = _ext.status()
    if not ok:
        pytest.skip(f"fused_resnet._C is not built: {reason} (tests/cuda/test_extension.py says whether it should be)")
    out_json = tmp_path / "host.json"
    cmd = [sys.executable, str(ROOT / "bench" / "host_overhead.py"), "--variants", "cuda-host", "--blocks",
           "bottleneck", "--steps", "2", "--repeat", "1", "--json", str(out_json)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {r["mode"]: r for r in json.loads(out_json.read_text())["rows"]}
    assert rows["infer"]["cuda_ext_calls"] == {"conv": 3}, rows
    # Each eval BatchNorm is folded at every forward: one batch_norm kernel for the weight, one for the bias.
    assert rows["infer"]["aten_kernels"] == {"_native_batch_norm_legit_no_training": 2 * 3}, rows
    train = rows["train"]["cuda_ext_calls"]
    assert train["conv"] == 3 and train["conv_dgrad"] == 2 and "batch_stats" not in train, train
    assert rows["train"]["aten_kernels_per_step"] <= 16, rows["train"]["aten_kernels"]


def test_launch_audit_lists_the_launches_of_a_training_step(tmp_path):
    """launch_audit.py on the layer1 bottleneck at N=128 (meta tensors): every launch with its grid;
    the triton backend's own launchers size them (conv3's forward: 128x128 tiles over 128*56*56
    rows and 256 channels, 6272 programs; the weight gradient's split-K slices are its grid axis
    1). With _C built, the cuda backend too: conv3's forward on CUTLASS's 128x128 tile, the same
    6272 programs; its weight gradient 256 x 64 on one column of 2 tiles, times the slices."""
    import json
    import math

    from fused_resnet import _ext

    backends = ["triton"] + (["cuda"] if _ext.status()[0] else [])
    out_json = tmp_path / "audit.json"
    cmd = [sys.executable, str(ROOT / "bench" / "launch_audit.py"), "--blocks", "layer1", "--backends",
           ",".join(backends), "--json", str(out_json)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = {r["backend"]: r for r in json.loads(out_json.read_text())["results"]}
    assert sorted(results) == sorted(backends), results.keys()
    for r in results.values():
        assert r["totals"]["launches"] == len(r["launches"]) > 20, r["totals"]
        for launch in r["launches"]:
            assert launch["programs"] == (math.prod(launch["grid"]) if launch["grid"] else None), launch
            assert launch["bytes"] > 0 or launch["kernel"].startswith("cudaMemsetAsync"), launch

    def only(backend, op, kernel):
        found = [x for x in results[backend]["launches"] if x["op"] == op and x["kernel"] == kernel]
        assert len(found) == 1, (op, kernel, [(x["op"], x["kernel"]) for x in results[backend]["launches"]])
        return found[0]

    conv3 = only("triton", "conv 64>256 1x1", "conv_kernel")
    assert (conv3["programs"], conv3["tile"], conv3["width"]) == (6272, "M128 N128 K64", "8 warps"), conv3
    wgrad = only("triton", "conv_backward 64>64 3x3", "conv_wgrad_kernel")
    assert wgrad["splits"] == str(wgrad["grid"][1]) and wgrad["grid"][0] == 9, wgrad  # taps x 64 x 64 tiles
    if "cuda" in results:
        conv3 = only("cuda", "conv 64>256 1x1", "fprop_prologue_bf16_128x128x32")
        assert (conv3["programs"], conv3["width"]) == (6272, "128 threads"), conv3
        wgrad = only("cuda", "conv_backward 64>256 1x1", "wgrad_prologue_bf16_128x128x32")
        assert wgrad["grid"][:2] == [2, 1] and wgrad["splits"].split()[0] == str(wgrad["grid"][2]), wgrad


def test_launch_audit_flags():
    """A launch is flagged when it moves >= 8 MB on fewer than 2 x 132 programs, or when its
    split-K slices wait for each other; library kernels (no grid of ours) only for the latter."""
    audit = load_bench_script("launch_audit")
    launch = audit.Launch("bn_act_backward 256", "sum_partials_kernel", (4, 3), bytes=38_000_000)
    assert launch.flag == "few programs"
    assert audit.Launch("op", "k", (264,), bytes=10**9).flag == ""
    assert audit.Launch("op", "k", (4, 3), bytes=7_900_000).flag == ""
    assert audit.Launch("op", "k", None, bytes=10**9).flag == ""
    serial = audit.Launch("op", "wgrad", (2, 1, 132), splits="132 serial", bytes=10**8)
    assert serial.flag == "serial split-K"
    assert audit.Launch("op", "wgrad", (2, 1, 100), splits="100 serial", bytes=10**8).flag == \
        "few programs, serial split-K"
    assert audit.Launch("op", "wgrad", (2, 131), splits="131", bytes=10**8).flag == "few programs"


def _gpu_check_plan() -> list[str]:
    """The command lines of the device-call plan at the top of bench/gpu_check.sh."""
    header = (ROOT / "bench" / "gpu_check.sh").read_text().split("\nset -u")[0]
    lines = [line.lstrip("# ").strip() for line in header.splitlines()]
    joined = "\n".join(lines).replace("\\\n", " ")  # continuation lines
    return [line for line in joined.splitlines() if "bash bench/gpu_check.sh" in line and "SKIP=" in line]


def _dry_run(env_and_args: str, tmp_path) -> subprocess.CompletedProcess:
    cmd = f"DRY_RUN=1 OUT={tmp_path} {env_and_args}"
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120, cwd=str(ROOT))


def _stages_run(stdout: str) -> list[str]:
    # "wheels" runs only where .whl/ holds wheels (a checkout that downloaded them).
    return [line.split()[1] for line in stdout.splitlines() if line.startswith("--- ") and line.split()[1] != "wheels"]


def test_gpu_check_plan_runs_its_stages_in_order(tmp_path):
    """The documented two-call plan: the first call builds, runs the CUDA kernel tests, model
    parity, the block benchmarks, the rest of the GPU tests (leaving those files out, the files
    of never-run tests first) and the model benchmarks, in that order; the second reuses the
    build and runs only what the first skipped."""
    _, first, second = _gpu_check_plan()
    out = _dry_run(first, tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ran = _stages_run(out.stdout)
    assert ran[:5] == ["env", "cutlass-headers", "build", "info", "tests-cuda"], ran
    assert ran.index("tests-cuda") < ran.index("check-resnet50-bf16-train") < ran.index("bench-blocks") \
        < ran.index("tests-gpu") < ran.index("bench-models")
    gpu_cmd = out.stdout.split("--- tests-gpu")[1].splitlines()[1]
    files = [a for a in gpu_cmd.split() if a.startswith("tests/")]
    assert files[:2] == ["tests/test_gpu_models.py", "tests/triton/test_conv_backward.py"], gpu_cmd
    tests = Path(__file__).resolve().parent
    every = {p.relative_to(ROOT).as_posix() for p in [*tests.glob("test_*.py"), *tests.glob("*/test_*.py")]}
    cuda_cmd = out.stdout.split("--- tests-cuda")[1].splitlines()[1]
    cuda_files = [a for a in cuda_cmd.split() if a.startswith("tests/")]
    assert cuda_files == sorted(p for p in every if p.startswith("tests/cuda/")), cuda_cmd
    expected = sorted(every - set(cuda_files))
    assert sorted(files) == expected and len(set(files)) == len(files), gpu_cmd
    assert "--models resnet50" in out.stdout.split("--- bench-models")[1].splitlines()[1]

    out = _dry_run(second, tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert _stages_run(out.stdout) == ["env", "info", "profile", "profile-models", "bench-graphs", "host-overhead",
                                       "host-profile", "bench-sync"], out.stdout


def test_gpu_check_training_plan_runs_training_first(tmp_path):
    """The training plan: build, the CUDA kernel tests, the blocks' training steps, their
    profile, ResNet-50 beside eager and torch.compile of eager, the triton backend's first
    steps with autotuning on (cold, then warm caches), then the host profile of block steps, then
    the SyncBatchNorm collectives' cost."""
    train = _gpu_check_plan()[0]
    out = _dry_run(train, tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert _stages_run(out.stdout) == ["env", "cutlass-headers", "build", "tests-cuda", "bench-blocks", "profile",
                                       "bench-models", "first-step-cold", "first-step-warm", "host-profile",
                                       "bench-sync"],\
        out.stdout
    cmd = {name: out.stdout.split(f"--- {name} ")[1].splitlines()[1] for name in ("bench-blocks", "bench-models")}
    assert "--modes train" in cmd["bench-blocks"], cmd
    assert all(a in cmd["bench-models"] for a in ("--models resnet50", "--compile", "--compile-variants eager",
                                                    "--modes train,infer")), cmd


def test_gpu_check_refuses_an_unknown_stage_name(tmp_path):
    out = _dry_run("SKIP='tests-cuda bench-graph' bash bench/gpu_check.sh --quick", tmp_path)
    assert out.returncode == 2
    assert "SKIP names 'bench-graph', which is no stage" in out.stderr


def test_op_traffic_counts_each_operators_inputs_and_outputs():
    from fused_resnet.tools.traffic import op_traffic

    a, b = torch.randn(4, 8), torch.randn(8)
    t = op_traffic(lambda: torch.add(a, b).relu_())
    # add reads a (128 B) and b (32 B) and writes 128 B; relu_ reads and writes its 128 B in place.
    assert t["by_op"] == {"aten::add": [1, 288], "aten::relu_": [1, 256]}
    assert (t["bytes"], t["ops"]) == (544, 2)
    # A view launches nothing; an expanded tensor moves its storage, not its view.
    t = op_traffic(lambda: b.expand(4, 8).t().clone())
    assert t["by_op"] == {"aten::clone": [1, 32 + 128]}


def test_traffic_of_a_fused_eval_block_is_its_two_convolutions():
    """bench/traffic.py on the meta device: an eval BasicBlock fused is two conv ops, the first
    reading x, its folded weight and bias and writing t, the second reading t, its weight and
    bias and x again (the residual) and writing the output; eager moves three times that.
    Each BatchNorm is folded into its conv at every forward: its four bf16 vectors upcast in
    one stack, then one eval batch_norm over the weight and one over the bias."""
    traffic = load_bench_script("traffic")
    rows = {r["variant"]: r for r in (traffic.count("basic", "infer", v, batch=2, dtype=torch.bfloat16)
                                      for v in ("eager", "fused"))}
    act, w, vec = 2 * 64 * 56 * 56 * 2, 64 * 64 * 9 * 2, 64 * 4
    by_op = dict(rows["fused"]["by_op"])
    conv_bytes = 5 * act + 2 * (w + vec)
    assert by_op.pop("fused_resnet::conv") == [2, conv_bytes]
    # Per BatchNorm: the weight read and written, with mean, var and gamma read; the bias from
    # five vectors into one; the stack reads and writes four bf16 vectors.
    assert by_op == {"aten::batch_norm": [4, 2 * (2 * w + 3 * vec + 6 * vec)], "aten::stack": [2, 2 * 4 * vec]}
    assert rows["fused"]["ops"] == 2 + 2 * 3 and rows["eager"]["ops"] == 7
    assert 2.9 < rows["eager"]["GB"] * 1e9 / conv_bytes < 3.1


def test_op_traffic_does_not_read_what_a_copy_overwrites():
    from fused_resnet.tools.traffic import op_traffic

    a, b = torch.empty(16), torch.randn(16)
    t = op_traffic(lambda: (a.copy_(b), a.zero_()))
    assert t["by_op"] == {"aten::copy_": [1, 128], "aten::zero_": [1, 64]}
