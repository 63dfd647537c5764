"""The CUDA extension fused_resnet._C as a whole, and the cuda backend's view of it.

CPU part (always runs, fast): the extension is built wherever a CUDA toolkit
exists (a missing _C is a failure there, not a skip), setup.py and CMakeLists.txt
compile the same sources, every op is registered under torch.ops.fused_resnet_cuda
with the schema of its Python op (minus the backend argument) and of the op list,
built_with() reports the build (the CUTLASS instantiations included), and the fake
(meta) implementations pass torch.library.opcheck on meta tensors and agree with the
fakes of fused_resnet.ops on shapes, dtypes and strides.

GPU part (@pytest.mark.gpu): opcheck on CUDA tensors, the ops through fused_resnet.ops
and autograd, and the input-validation errors the host launchers share
(csrc/ops/common.cpp). Each op's kernels are tested in tests/cuda/test_<op>.py.
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

from fused_resnet import _ext, op_list
from fused_resnet.backends import cuda as cuda_backend
from helpers import assert_close_fp32

from .common import DEV, _act, _ext_expected, _vec
from .test_bn_act import _bn_act_inputs


OPS = cuda_backend.OP_NAMES
ROOT = Path(__file__).resolve().parents[2]


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
    every .cpp and .cu under csrc/ (the host launchers of csrc/ops/ included), and the CUTLASS
    instantiations of csrc/cutlass/, which both glob."""
    cmake = (ROOT / "CMakeLists.txt").read_text()
    listed = re.search(r"set\(FUSED_RESNET_SOURCES\s+(.*?)\)", cmake, re.S).group(1).split()
    on_disk = sorted(str(p.relative_to(ROOT)) for ext in ("*.cpp", "*.cu") for p in (ROOT / "csrc").rglob(ext)
                     if p.parent.name != "cutlass")
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


def test_cutlass_kernels_compiled(C):
    names = C.built_with()["cutlass_kernels"]
    for op in ("fprop_prologue", "fprop_bias_relu", "wgrad_prologue", "fprop_stats", "dgrad_bn_relu"):
        for dt in ("f16", "bf16"):
            assert any(n.startswith(f"{op}_{dt}_") for n in names), (op, dt, names)
    assert len(set(names)) == len(names) == 18, names


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
