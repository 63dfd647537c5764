"""The CUDA extension fused_resnet._C and the cuda backend.

CPU part (always runs, fast): the extension is built wherever a CUDA toolkit
exists (a missing _C is a failure there, not a skip), every op is registered
under torch.ops.fused_resnet_cuda with the schema of its Python op (minus the
backend argument), built_with() reports the build, and the fake (meta)
implementations pass torch.library.opcheck on meta tensors and agree with the
fakes of fused_resnet.ops on shapes, dtypes and strides.

GPU part (@pytest.mark.gpu): every kernel against fused_resnet.reference in
fp32/fp16/bf16, NHWC and NCHW, odd channel counts, large means, running-stat
updates, determinism, CUDA-graph capture, and the input-validation errors.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fused_resnet import _ext, op_list, reference
from fused_resnet.backends import cuda as cuda_backend
from helpers import assert_close_fp32, max_err, randn

OPS = cuda_backend.OP_NAMES
ROOT = Path(__file__).resolve().parent.parent
LOWP = (torch.float16, torch.bfloat16)
DTYPES = (torch.float32,) + LOWP


def _nvcc_available() -> bool:
    if os.environ.get("CUDA_HOME") and os.path.exists(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")):
        return True
    return shutil.which("nvcc") is not None or os.path.exists("/usr/local/cuda/bin/nvcc")


def _ext_expected() -> tuple[bool, str]:
    """Whether this checkout must have _C, and if not, why."""
    if os.environ.get("FUSED_RESNET_SKIP_EXT", "0") not in ("", "0"):
        return False, "FUSED_RESNET_SKIP_EXT is set: the extension was deliberately not built"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build: setup.py builds no extension"
    if not _nvcc_available():
        return False, "no CUDA toolkit (nvcc) here: setup.py builds no extension"
    return True, ""


@pytest.fixture(scope="module")
def ns():
    """torch.ops.fused_resnet_cuda, with _C loaded; fails when _C should exist and does not."""
    expected, why = _ext_expected()
    ok, reason = _ext.status()
    if not ok:
        if expected:
            pytest.fail(
                f"a CUDA toolkit exists here but fused_resnet._C is not importable: {reason}. "
                "Build it: pip install --no-deps nvidia-cutlass && MAX_JOBS=2 pip install --no-build-isolation -e ."
            )
        pytest.skip(why)
    return cuda_backend.ops()


# ====================================================================== CPU


def test_extension_built():
    expected, why = _ext_expected()
    ok, reason = _ext.status()
    if not expected and not ok:
        pytest.skip(why)
    assert ok, (
        f"a CUDA toolkit exists here but fused_resnet._C is not importable: {reason}. "
        "Build it: pip install --no-deps nvidia-cutlass && MAX_JOBS=2 pip install --no-build-isolation -e ."
    )
    import fused_resnet._C as C

    assert C.__file__.startswith(os.path.dirname(cuda_backend.__file__).rsplit(os.sep, 1)[0]), C.__file__
    for name in OPS + cuda_backend.EXTRA_OP_NAMES + ("conv_reason", "conv_dgrad_reason"):
        assert hasattr(C, name), f"_C does not expose {name}"


def _setup_sources() -> list[str]:
    """setup.py's SOURCES list, read from its text (importing setup.py runs setup())."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    (node,) = [n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "SOURCES"]
    return [e.value for e in node.value.left.elts]


def test_cmake_and_setup_compile_the_same_sources():
    """CMakeLists.txt (C++ development) and setup.py (the install) build _C from the same files:
    every csrc/*.cpp and *.cu, and the CUTLASS instantiations of csrc/cutlass/, which both glob."""
    cmake = (ROOT / "CMakeLists.txt").read_text()
    listed = re.search(r"set\(FUSED_RESNET_SOURCES\s+(.*?)\)", cmake, re.S).group(1).split()
    on_disk = sorted(str(p.relative_to(ROOT)) for ext in ("*.cpp", "*.cu") for p in (ROOT / "csrc").glob(ext))
    assert sorted(listed) == sorted(_setup_sources()) == on_disk
    assert re.search(r"file\(GLOB FUSED_RESNET_CUTLASS_SOURCES .*/csrc/cutlass/\*\.cu\"\)", cmake)
    assert 'os.listdir(os.path.join(ROOT, "csrc", "cutlass")) if f.endswith(".cu")' in (ROOT / "setup.py").read_text()


def test_extension_shares_the_cpp_runtime(ns):
    """_C links the shared libstdc++ and carries no copy of it: a second copy of the
    iostream/locale machinery beside torch's crashes when a message formats a number."""
    import fused_resnet._C as C

    readelf = shutil.which("readelf")
    assert readelf, "readelf (binutils) is missing, though a toolchain built _C here"
    dyn = subprocess.run([readelf, "-d", "-W", C.__file__], capture_output=True, text=True, check=True).stdout
    assert "[libstdc++.so.6]" in dyn, f"_C does not link the shared libstdc++:\n{dyn}"
    syms = subprocess.run([readelf, "--dyn-syms", "-W", C.__file__], capture_output=True, text=True,
                          check=True).stdout
    own = [line.split()[-1] for line in syms.splitlines() if "codecvt" in line and " UND " not in line]
    assert not own, f"_C defines libstdc++ internals itself: {own[:5]}"


def test_import_does_not_load_extension():
    src = (
        "import sys, fused_resnet, fused_resnet.ops, fused_resnet.backends.cuda\n"
        "assert 'fused_resnet._C' not in sys.modules, 'import fused_resnet loaded _C'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_built_with(ns):
    import fused_resnet._C as C

    info = C.built_with()
    assert set(info) >= {"cuda_version", "arch_list", "torch_version", "ops"}
    assert info["arch_list"], "no SM architecture compiled in"
    for arch in info["arch_list"]:
        major, minor = arch.split(".")
        assert major.isdigit() and minor.isdigit() and int(major) >= 7, info
    assert info["cuda_version"].split(".")[0] == torch.version.cuda.split(".")[0], (info, torch.version.cuda)
    assert info["torch_version"] == torch.__version__.split("+")[0], (info, torch.__version__)
    assert tuple(info["ops"]) == OPS + cuda_backend.EXTRA_OP_NAMES


def _sig(schema) -> tuple:
    """Arguments (name, type, optional) and return types, without alias annotations."""
    args = tuple((a.name, str(a.type)) for a in schema.arguments if a.name != "backend")
    rets = tuple(str(r.type) for r in schema.returns)
    return args, rets


@pytest.mark.parametrize("name", OPS)
def test_op_schema_mirrors_python_op(ns, name):
    import fused_resnet.ops  # noqa: F401  (defines torch.ops.fused_resnet)

    cpp = getattr(ns, name).default._schema
    py = getattr(torch.ops.fused_resnet, name).default._schema
    assert cpp.name == f"fused_resnet_cuda::{name}"
    assert _sig(cpp) == _sig(py), f"\n  C++:    {cpp}\n  Python: {py}"
    mutated = [a.name for a in cpp.arguments if a.alias_info is not None and a.alias_info.is_write]
    mutated_py = [a.name for a in py.arguments if a.alias_info is not None and a.alias_info.is_write]
    assert mutated == mutated_py


@pytest.mark.parametrize("name", OPS + cuda_backend.EXTRA_OP_NAMES)
def test_op_schema_is_the_op_lists(ns, name):
    """C++ spells each schema once more (TORCH_LIBRARY): it is the op list's, minus backend."""
    cpp = getattr(ns, name).default._schema
    listed = torch._C.parse_schema(f"{cuda_backend.LIB}::" + op_list.CUDA_OPS[name].schema(backend=False))
    assert _sig(cpp) == _sig(listed), f"\n  C++:      {cpp}\n  op list: {listed}"
    assert [a.alias_info is not None and a.alias_info.is_write for a in cpp.arguments] == [
        a.alias_info is not None and a.alias_info.is_write for a in listed.arguments]


@pytest.mark.parametrize("name", OPS + cuda_backend.EXTRA_OP_NAMES)
def test_kernels_registered(ns, name):
    qual = f"fused_resnet_cuda::{name}"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(qual, "CUDA"), f"{qual} has no CUDA kernel"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(qual, "Meta"), f"{qual} has no Meta/fake kernel"
    assert not torch._C._dispatch_has_kernel_for_dispatch_key(qual, "CPU")


def test_cpu_tensors_are_refused(ns):
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(NotImplementedError, match="CPU"):
        ns.batch_stats(x)


def _meta(*shape, dtype=torch.float32, cl=False):
    t = torch.empty(*shape, dtype=dtype, device="meta")
    return t.contiguous(memory_format=torch.channels_last) if cl else t


def _sample_inputs(device="meta", make=None):
    """(name, args without backend) for every op: both layouts, odd channels, optional inputs."""
    make = make or (lambda *s, dtype=torch.float32, cl=False: _meta(*s, dtype=dtype, cl=cl))
    out = []
    for cl in (False, True):
        for dtype, c in ((torch.float32, 3), (torch.bfloat16, 67), (torch.float16, 64)):
            x = make(2, c, 5, 3, dtype=dtype, cl=cl)
            v = lambda: make(c)  # noqa: E731
            other = make(2, c, 5, 3, dtype=dtype, cl=not cl)
            out += [
                ("batch_stats", (x,)),
                ("batch_stats_backward", (v(), v(), x, v())),
                ("bn_finalize", (v(), v(), v(), v(), 1e-5)),
                ("bn_finalize", (v(), v(), None, None, 1e-3)),
                ("bn_finalize_backward", (v(), v(), v(), v(), v(), v(), v())),
                ("bn_finalize_backward", (v(), v(), None, v(), None, v(), v())),
                ("bn_act", (x, v(), v(), None, None, None, False)),
                ("bn_act", (x, v(), v(), other, None, None, True)),
                ("bn_act", (x, v(), v(), x, v(), v(), True)),
                ("bn_act_backward", (x, x, x, v(), None, None, True, [True, True, True, False, False, False])),
                ("bn_act_backward", (x, x, x, v(), other, v(), True, [True] * 6)),
                ("bn_act_backward", (x, x, x, v(), x, None, False, [False, True, False, True, False, False])),
            ]
    for dtype, stride, wcl in ((torch.bfloat16, 1, False), (torch.float16, 2, True)):
        # conv: inputs the CUTLASS kernels take (channels_last, 16-bit, channels multiple of 8)
        x = make(2, 16, 9, 7, dtype=dtype, cl=True)
        w = make(24, 16, 3, 3, dtype=dtype, cl=wcl)
        res = make(2, 24, 9 // stride + (9 % stride > 0), 7 // stride + (7 % stride > 0), dtype=dtype, cl=True)
        geo = ([stride, stride], [1, 1], [1, 1], 1)
        out += [
            ("conv", (x, w, None, make(16), make(16), None, *geo, False, True)),
            ("conv", (x, w, None, make(16), make(16), res, *geo, False, False)),
        ]
    return out


def _conv_grad_inputs(make):
    """The pieces of conv_backward the cuda backend composes: wgrad (stride 2), dgrad (unit stride), the
    output gradient (both layouts)."""
    x = make(2, 16, 9, 7, dtype=torch.bfloat16, cl=True)
    w = make(24, 16, 3, 3, dtype=torch.bfloat16, cl=True)
    return [
        ("conv_wgrad", (make(2, 24, 5, 4, dtype=torch.bfloat16, cl=True), x, w, make(16), make(16), [2, 2], [1, 1],
                        [1, 1])),
        ("conv_dgrad", (make(2, 24, 9, 7, dtype=torch.bfloat16, cl=True), x, w, make(16), make(16), [1, 1], [1, 1],
                        [1, 1])),
        ("conv_output_grad", (make(2, 16, 9, 7, dtype=torch.bfloat16, cl=True), make(16), make(16), x, make(16))),
        ("conv_output_grad", (make(2, 3, 5, 4), make(3), make(3), make(2, 3, 5, 4), make(3))),
    ]


def _running_inputs(make_vec, make_long):
    return [
        ("bn_update_running", (make_vec(5), make_vec(5), 30, make_vec(5), make_vec(5), make_long(), 0.1)),
        ("bn_update_running", (make_vec(5), make_vec(5), 30, make_vec(5), make_vec(5), make_long(), None)),
        ("bn_update_running", (make_vec(5), make_vec(5), 7, make_vec(5), make_vec(5), None, 0.5)),
    ]


def test_opcheck_meta(ns):
    """Schema, fake-tensor and dynamic-shape checks of every op on meta tensors."""
    cases = _sample_inputs() + _running_inputs(lambda n: _meta(n), lambda: _meta((), dtype=torch.long))
    cases += _conv_grad_inputs(lambda *s, dtype=torch.float32, cl=False: _meta(*s, dtype=dtype, cl=cl))
    for name, args in cases:
        result = torch.library.opcheck(
            getattr(ns, name).default, args,
            test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
        )
        assert all(v == "SUCCESS" for v in result.values()), (name, result)


def test_fakes_match_python_ops(ns):
    """The fakes of fused_resnet_cuda:: and fused_resnet:: agree on shapes, dtypes and strides."""
    import fused_resnet.ops  # noqa: F401

    for name, args in _sample_inputs():
        cpp = getattr(ns, name)(*args)
        py = getattr(torch.ops.fused_resnet, name)(*args, "cuda")
        cpp = cpp if isinstance(cpp, tuple) else (cpp,)
        py = py if isinstance(py, tuple) else (py,)
        assert len(cpp) == len(py)
        for i, (a, b) in enumerate(zip(cpp, py)):
            assert (a.shape, a.dtype, a.stride()) == (b.shape, b.dtype, b.stride()), (name, i, a, b)


def test_backend_on_cpu_machine(ns):
    """Every reason is listed: this machine's (no GPU), then the input's (device, dtype)."""
    backend = cuda_backend.CudaBackend()
    machine = backend.not_supported_reasons()
    if not torch.cuda.is_available():
        assert machine == ["no CUDA GPU is visible"]
    assert backend.not_supported_reasons(torch.device("cpu"), torch.float32) == machine + [
        "tensors are on cpu, not CUDA"]
    assert backend.not_supported_reasons(torch.device("cpu"), torch.float64) == machine + [
        "tensors are on cpu, not CUDA", "dtype torch.float64 is not one of fp32/fp16/bf16"]
    assert backend.not_supported_reasons(torch.device("cuda"), torch.bfloat16) == machine


# ====================================================================== GPU

DEV = "cuda"
SHAPES = [(4, 64, 9, 7), (3, 67, 5, 5), (2, 3, 11, 13), (8, 256, 4, 4), (1, 128, 1, 1)]


def _act(shape, dtype, cl, seed=0, offset=0.0, scale=1.0):
    t = randn(*shape, dtype=torch.float32, device=DEV, seed=seed) * scale + offset
    t = t.to(dtype)
    return t.contiguous(memory_format=torch.channels_last) if cl else t.contiguous()


def _vec(c, seed=0, lo=0.5, hi=1.5):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(c, generator=g) * (hi - lo) + lo).to(DEV)


def _same_layout(a, b, name):
    assert a.shape == b.shape and a.dtype == b.dtype and a.stride() == b.stride(), (
        f"{name}: {a.shape} {a.dtype} {a.stride()} vs reference {b.shape} {b.dtype} {b.stride()}"
    )


def _close_act(actual, expected, name):
    """Elementwise results: fp32 tight; fp16/bf16 within one rounding of the dtype."""
    _same_layout(actual, expected, name)
    if actual.dtype == torch.float32:
        assert_close_fp32(actual, expected, name)
    else:  # the same fp32 math rounded once to the dtype: within the dtype's default tolerance
        torch.testing.assert_close(actual, expected, msg=lambda m: f"{name}: {m}")


def _close_stats(x, mean, var, rmean, rvar):
    """Against fp64 statistics of the same values: at most 2x the reference's error, or fp32-level."""
    var64, mean64 = torch.var_mean(x.double(), dim=(0, 2, 3), unbiased=False)
    for name, got, ref, exact in (("mean", mean, rmean, mean64), ("var", var, rvar, var64)):
        bound = 2 * max_err(ref, exact) + 1e-6 * (1 + exact.abs().max().item())
        assert max_err(got, exact) <= bound, f"{name}: error {max_err(got, exact):.3g} > {bound:.3g}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_batch_stats(ns, dtype, cl, shape):
    x = _act(shape, dtype, cl, offset=0.3)
    mean, var = ns.batch_stats(x)
    rmean, rvar = reference.batch_stats(x)
    assert mean.dtype == var.dtype == torch.float32 and mean.shape == var.shape == (shape[1],)
    _close_stats(x, mean, var, rmean, rvar)
    # Deterministic: the same bits twice.
    mean2, var2 = ns.batch_stats(x)
    assert torch.equal(mean, mean2) and torch.equal(var, var2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
def test_batch_stats_backward(ns, dtype, cl):
    """dx = (dmean + 2 dvar (x - mean)) / M in x's layout: the reference's fp32 formula rounded
    once; dmean expanded (stride 0), as autograd passes a sum's gradient."""
    x = _act((4, 24, 9, 7), dtype, cl, offset=0.3)
    mean = x.float().mean((0, 2, 3))
    dmean = torch.full((1,), 0.7, device=DEV).expand(24)
    dvar = torch.randn(24, device=DEV)
    _close_act(ns.batch_stats_backward(dmean, dvar, x, mean), reference.batch_stats_backward(dmean, dvar, x, mean),
               "dx")


@pytest.mark.gpu
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
def test_batch_stats_large_mean(ns, cl):
    """1e4 + N(0, 1) over ~400k rows: E[x^2]-E[x]^2 in fp32 would lose every digit of var."""
    x = _act((32, 16, 112, 112), torch.float32, cl, offset=1e4)
    mean, var = ns.batch_stats(x)
    var64, mean64 = torch.var_mean(x.double(), dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean.double(), mean64, rtol=1e-6, atol=0)  # fp32 output: ulp(1e4) ~ 1e-3
    torch.testing.assert_close(var.double(), var64, rtol=1e-5, atol=0)
    naive = (x.double() ** 2).mean((0, 2, 3)) - mean64**2  # sanity: the data has a real variance
    assert (naive - 1).abs().max() < 0.1


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_stats_large_batch(ns, dtype):
    """Many chunks per channel (the two-level merge) in both layouts."""
    for cl in (False, True):
        x = _act((64, 32, 56, 56), dtype, cl, offset=2.0, scale=3.0)
        mean, var = ns.batch_stats(x)
        rmean, rvar = reference.batch_stats(x)
        _close_stats(x, mean, var, rmean, rvar)


@pytest.mark.gpu
def test_batch_stats_odd_strides_and_offsets(ns):
    base = _act((4, 68, 9, 7), torch.float16, True)
    x = base[:, 1:]  # channels_last-like but not dense: copied to a dense layout first
    mean, var = ns.batch_stats(x)
    rmean, rvar = reference.batch_stats(x)
    assert_close_fp32(mean, rmean, "mean", rtol=1e-5, atol=1e-6)
    assert_close_fp32(var, rvar, "var", rtol=1e-4, atol=1e-6)
    flat = torch.randn(1 + 2 * 16 * 5 * 5, device=DEV)[1:].view(2, 16, 5, 5)  # misaligned: scalar path
    m, v = ns.batch_stats(flat)
    rm, rv = reference.batch_stats(flat)
    assert_close_fp32(m, rm, "mean")
    assert_close_fp32(v, rv, "var")


@pytest.mark.gpu
@pytest.mark.parametrize("affine", ["both", "weight", "none", "bf16"])
def test_bn_finalize(ns, affine):
    c = 67
    mean, var = torch.randn(c, device=DEV), _vec(c, 1, 0.0, 3.0)
    w = b = None
    if affine in ("both", "weight", "bf16"):
        w = torch.randn(c, device=DEV)
    if affine in ("both", "bf16"):
        b = torch.randn(c, device=DEV)
    if affine == "bf16":
        w, b = w.bfloat16(), b.bfloat16()
    got = ns.bn_finalize(mean, var, w, b, 1e-5)
    want = reference.bn_finalize(mean, var, w, b, 1e-5)
    for g, r, name in zip(got, want, ("scale", "shift", "invstd")):
        assert g.dtype == torch.float32
        assert_close_fp32(g, r, name, rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("weight,dinvstd", [(True, True), (True, False), (False, True), (False, False)])
def test_bn_finalize_backward(ns, weight, dinvstd):
    c = 67
    mean, var = torch.randn(c, device=DEV), _vec(c, 1, 0.0, 3.0)
    w = torch.randn(c, device=DEV) if weight else None
    scale, _, invstd = reference.bn_finalize(mean, var, w, None, 1e-5)
    ds, dsh, di = (torch.randn(c, device=DEV) for _ in range(3))
    di = di if dinvstd else None
    got = ns.bn_finalize_backward(ds, dsh, di, mean, w, scale, invstd)
    want = reference.bn_finalize_backward(ds, dsh, di, mean, w, scale, invstd)
    for g, r, name in zip(got, want, ("dmean", "dvar", "dweight")):
        assert g.shape == r.shape, name
        assert_close_fp32(g, r, name, rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("tracked", [True, False])
@pytest.mark.parametrize("rdtype", [torch.float32, torch.float64])
def test_bn_update_running(ns, momentum, tracked, rdtype):
    """Every momentum mode of the reference, no count and no momentum included (factor 0:
    the running statistics stay)."""
    c, count = 67, 4 * 9 * 7
    mean, var = torch.randn(c, device=DEV), _vec(c, 2, 0.1, 2.0)
    rm = torch.randn(c, device=DEV, dtype=rdtype)
    rv = _vec(c, 3).to(rdtype)
    nbt = torch.tensor(4, device=DEV) if tracked else None
    rm2, rv2 = rm.clone(), rv.clone()
    nbt2 = nbt.clone() if tracked else None
    for _ in range(3):
        ns.bn_update_running(mean, var, count, rm, rv, nbt, momentum)
        reference.bn_update_running(mean, var, count, rm2, rv2, nbt2, momentum)
    assert rm.dtype == rdtype and rv.dtype == rdtype
    torch.testing.assert_close(rm, rm2, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(rv, rv2, rtol=1e-6, atol=1e-7)
    if tracked:
        assert nbt.item() == nbt2.item() == 7


@pytest.mark.gpu
def test_bn_update_running_matches_batchnorm(ns):
    """Against nn.BatchNorm2d itself, momentum 0.1 and None, over several steps."""
    for momentum in (0.1, None):
        bn = torch.nn.BatchNorm2d(67, momentum=momentum).to(DEV).train()
        rm, rv = bn.running_mean.clone(), bn.running_var.clone()
        nbt = bn.num_batches_tracked.clone()
        for step in range(4):
            x = _act((4, 67, 9, 7), torch.float32, step % 2 == 0, seed=step, offset=step)
            bn(x)
            mean, var = ns.batch_stats(x)
            ns.bn_update_running(mean, var, x.numel() // 67, rm, rv, nbt, momentum)
        assert nbt.item() == bn.num_batches_tracked.item() == 4
        torch.testing.assert_close(rm, bn.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rv, bn.running_var, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_bn_update_running_cuda_graph(ns):
    """No host synchronisation: the update captures into a CUDA graph and replays."""
    c = 64
    mean, var = torch.randn(c, device=DEV), _vec(c)
    rm, rv = torch.zeros(c, device=DEV), torch.ones(c, device=DEV)
    nbt = torch.zeros((), dtype=torch.long, device=DEV)
    ref_rm, ref_rv, ref_nbt = rm.clone(), rv.clone(), nbt.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up (loads _C, plans) outside the capture
        ns.bn_update_running(mean, var, 100, rm.clone(), rv.clone(), nbt.clone(), None)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        ns.bn_update_running(mean, var, 100, rm, rv, nbt, None)
    for _ in range(3):
        g.replay()
        reference.bn_update_running(mean, var, 100, ref_rm, ref_rv, ref_nbt, None)
    torch.cuda.synchronize()
    assert nbt.item() == ref_nbt.item() == 3
    torch.testing.assert_close(rm, ref_rm, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(rv, ref_rv, rtol=1e-6, atol=1e-7)


RES_MODES = ["none", "plain", "affine", "other_layout"]


def _bn_act_inputs(shape, dtype, cl, res_mode, seed=0):
    c = shape[1]
    y = _act(shape, dtype, cl, seed=seed)
    scale, shift = _vec(c, seed + 1), torch.randn(c, device=DEV) * 0.5
    res = rs = rb = None
    if res_mode != "none":
        res = _act(shape, dtype, cl if res_mode != "other_layout" else not cl, seed=seed + 2)
    if res_mode == "affine":
        rs, rb = _vec(c, seed + 3), torch.randn(c, device=DEV) * 0.5
    return y, scale, shift, res, rs, rb


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("res_mode", RES_MODES)
@pytest.mark.parametrize("relu", [True, False])
def test_bn_act(ns, dtype, cl, shape, res_mode, relu):
    args = _bn_act_inputs(shape, dtype, cl, res_mode)
    out = ns.bn_act(*args, relu)
    ref = reference.bn_act(*args, relu)
    _close_act(out, ref, "out")


@pytest.mark.gpu
def test_bn_act_misaligned_and_strided(ns):
    c = 64
    base = torch.randn(1 + 2 * c * 6 * 6, device=DEV, dtype=torch.float16)
    y = base[1:].view(2, c, 6, 6)  # 2-byte offset: not 16-byte aligned
    scale, shift = _vec(c), torch.randn(c, device=DEV)
    _close_act(ns.bn_act(y, scale, shift, None, None, None, True), reference.bn_act(y, scale, shift, None, None, None, True), "out")
    t = _act((2, 6, 6, c), torch.float16, False).permute(0, 3, 1, 2)  # channels_last view
    r = _act((2, c, 6, 6), torch.float16, False)
    _close_act(ns.bn_act(t, scale, shift, r, None, None, False), reference.bn_act(t, scale, shift, r, None, None, False), "out")


MASKS = [
    [True] * 6,
    [True, False, False, False, False, False],
    [False, True, True, False, False, False],
    [True, True, True, True, False, False],
    [False, False, False, True, True, True],
    [False, False, True, False, False, True],
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", SHAPES[:3] + [(16, 64, 28, 28)], ids=str)
@pytest.mark.parametrize("mask", MASKS, ids=lambda m: "".join("1" if b else "0" for b in m))
@pytest.mark.parametrize("relu", [True, False])
def test_bn_act_backward(ns, dtype, cl, shape, mask, relu):
    needs_res = mask[3] or mask[4] or mask[5]
    y, scale, shift, res, rs, rb = _bn_act_inputs(shape, dtype, cl, "affine" if needs_res else "none")
    out = reference.bn_act(y, scale, shift, res, rs, rb, relu)
    dout = _act(shape, dtype, cl, seed=7)
    got = ns.bn_act_backward(dout, out, y, scale, res, rs, relu, mask)
    want = reference.bn_act_backward(dout, out, y, scale, res, rs, relu, mask)
    # fp64 reference of the sums, for the low-precision rule
    g64 = dout.double() * (out > 0) if relu else dout.double()
    sums64 = {1: (g64 * y.double()).sum((0, 2, 3)), 2: g64.sum((0, 2, 3)), 5: g64.sum((0, 2, 3))}
    if res is not None:
        sums64[4] = (g64 * res.double()).sum((0, 2, 3))
    names = ("dy", "dscale", "dshift", "dresidual", "dres_scale", "dres_shift")
    for i, (g, w, name) in enumerate(zip(got, want, names)):
        if not mask[i]:
            assert g.numel() == 0 and g.dtype == torch.float32, f"{name}: not asked for, got {g.shape} {g.dtype}"
            continue
        if i in (0, 3):
            _close_act(g, w, name)
        else:
            assert g.dtype == torch.float32 and g.shape == (shape[1],), name
            bound = 2 * max_err(w, sums64[i]) + 1e-5 * (1 + sums64[i].abs().max().item())
            assert max_err(g, sums64[i]) <= bound, f"{name}: {max_err(g, sums64[i]):.3g} > {bound:.3g}"
    if mask[2] and mask[5]:
        assert got[2].data_ptr() != got[5].data_ptr(), "dshift and dres_shift must not alias"
    again = ns.bn_act_backward(dout, out, y, scale, res, rs, relu, mask)
    for a, b in zip(got, again):
        assert torch.equal(a, b), "not deterministic"


@pytest.mark.gpu
def test_bn_act_backward_residual_layouts(ns):
    """dresidual takes residual's layout, dy takes y's."""
    y, scale, shift, _, rs, rb = _bn_act_inputs((2, 64, 6, 6), torch.bfloat16, True, "affine")
    res = _act((2, 64, 6, 6), torch.bfloat16, False, seed=3)
    out = reference.bn_act(y, scale, shift, res, rs, rb, True)
    dout = _act((2, 64, 6, 6), torch.bfloat16, False, seed=4)
    got = ns.bn_act_backward(dout, out, y, scale, res, rs, True, [True] * 6)
    want = reference.bn_act_backward(dout, out, y, scale, res, rs, True, [True] * 6)
    _close_act(got[0], want[0], "dy")
    _close_act(got[3], want[3], "dresidual")


@pytest.mark.gpu
def test_opcheck_cuda(ns):
    def make(*s, dtype=torch.float32, cl=False):
        t = torch.randn(*s, device=DEV).to(dtype)
        if len(s) == 1:
            return t.abs() + 0.1
        return t.contiguous(memory_format=torch.channels_last) if cl else t

    cases = _sample_inputs(make=make) + _conv_grad_inputs(make) + _running_inputs(
        lambda n: torch.rand(n, device=DEV) + 0.1, lambda: torch.tensor(3, device=DEV)
    )
    for name, args in cases:
        result = torch.library.opcheck(
            getattr(ns, name).default, args,
            test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
        )
        assert all(v == "SUCCESS" for v in result.values()), (name, result)


@pytest.mark.gpu
def test_through_python_ops_and_autograd(ns):
    """fused_resnet.ops with backend='cuda' matches backend='reference', gradients included."""
    import fused_resnet.ops as ops

    results = {}
    for backend in ("cuda", "reference"):
        torch.manual_seed(0)  # the same inputs for both
        y, scale, shift, res, rs, rb = _bn_act_inputs((4, 64, 8, 8), torch.float32, True, "affine", seed=5)
        leaves = [t.requires_grad_() for t in (y, scale, shift, res, rs, rb)]
        mean, var = ops.batch_stats(y, backend)
        sc, sh, _ = ops.bn_finalize(mean, var, scale, shift, 1e-5, backend)
        out = ops.bn_act(y, sc, sh, res, rs, rb, True, backend)
        out.square().sum().backward()
        results[backend] = [out.detach()] + [t.grad for t in leaves]
    for a, b in zip(results["cuda"], results["reference"]):
        assert_close_fp32(a, b, "ops", rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_bad_inputs(ns):
    y = _act((2, 67, 5, 5), torch.float16, True)
    scale, shift = _vec(67), _vec(67)
    with pytest.raises(RuntimeError, match=r"scale must be on device cuda:0 .* got cpu"):
        ns.bn_act(y, scale.cpu(), shift, None, None, None, True)
    with pytest.raises(RuntimeError, match=r"shift must have shape \[67\] .* got \[64\]"):
        ns.bn_act(y, scale, shift[:64], None, None, None, True)
    with pytest.raises(RuntimeError, match=r"scale must be a float32 per-channel vector, got dtype Half"):
        ns.bn_act(y, scale.half(), shift, None, None, None, True)
    with pytest.raises(RuntimeError, match=r"residual must have dtype Half .* got BFloat16"):
        ns.bn_act(y, scale, shift, y.bfloat16(), None, None, True)
    with pytest.raises(RuntimeError, match=r"residual must have shape \[2, 67, 5, 5\] .* got \[2, 67, 5, 4\]"):
        ns.bn_act(y, scale, shift, y[..., :4], None, None, True)
    with pytest.raises(RuntimeError, match="res_scale and res_shift must be given together"):
        ns.bn_act(y, scale, shift, y, scale, None, True)
    with pytest.raises(RuntimeError, match=r"x must have dtype float32, float16 or bfloat16, got Double"):
        ns.batch_stats(y.double())
    with pytest.raises(RuntimeError, match=r"x must be a 4-D \(N, C, H, W\) tensor, got a 3-D"):
        ns.batch_stats(y[0])
    with pytest.raises(RuntimeError, match=r"var must have shape \[67\] .* got \[3\]"):
        ns.bn_finalize(scale, scale[:3], None, None, 1e-5)
    with pytest.raises(RuntimeError, match="count .* must be > 1"):
        ns.bn_update_running(scale, shift, 1, scale.clone(), shift.clone(), None, 0.1)
    with pytest.raises(RuntimeError, match="num_batches_tracked must have dtype int64, got Float"):
        ns.bn_update_running(scale, shift, 10, scale.clone(), shift.clone(), torch.zeros((), device=DEV), 0.1)
    with pytest.raises(RuntimeError, match=r"dout must have shape \[2, 67, 5, 5\]"):
        ns.bn_act_backward(y[:1], y, y, scale, None, None, True, [True] * 3 + [False] * 3)
    with pytest.raises(RuntimeError, match="output_mask must have 6 entries"):
        ns.bn_act_backward(y, y, y, scale, None, None, True, [True] * 3)
    with pytest.raises(RuntimeError, match="gradient of residual or res_scale, but residual is None"):
        ns.bn_act_backward(y, y, y, scale, None, None, True, [True] * 6)
