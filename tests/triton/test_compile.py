"""Every kernel specialisation the triton backend can launch compiles for sm_90 (Hopper).

No GPU is needed: triton.compile(ASTSource, target=GPUTarget("cuda", 90, 32))
runs the whole pipeline down to a cubin. conftest.py sets TRITON_INTERPRET=1,
under which @triton.jit functions are interpreted rather than compiled, so the
compilation runs in subprocesses whose environment lacks it
(``python -m fused_resnet.kernels SHARD NSHARDS 90``, one per CPU core, each
compiling every n-th specialisation; two tests take half of the shards each).

The subprocesses use Triton's normal on-disk cache: only successful
compilations are cached, under a key that includes the kernel source, the
constexprs, the options and the target, so a cache hit is a specialisation that
did compile, and any edit to a kernel recompiles it. A cold run compiles every
specialisation of ``fused_resnet.kernels.all_specializations()`` (each kernel
module lists its own: conv and conv_shortcut, conv_backward, batch_stats,
bn_finalize, bn_act), several CPU-minutes in all; FUSED_RESNET_FRESH_COMPILE=1
forces one by using an empty cache directory.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fused_resnet import kernels

ROOT = Path(__file__).resolve().parents[2]


def _env(cache_dir):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if os.environ.get("FUSED_RESNET_FRESH_COMPILE", "0") == "1":
        env["TRITON_CACHE_DIR"] = str(cache_dir)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _check_names_and_signatures(specs):
    names = [s[0] for s in specs]
    assert len(names) == len(set(names)), "duplicate specialisation names"
    for _, fn, sig, consts, _, _ in specs:  # signatures in sync with the kernels' parameters
        assert list(sig) == list(fn.arg_names), fn.__name__
        assert set(consts) == {n for n, t in sig.items() if t == "constexpr"}, fn.__name__


def test_specialisation_list_covers_the_launcher():
    from fused_resnet.kernels import conv as k

    specs = kernels.all_specializations()
    _check_names_and_signatures(specs)
    for module in kernels.modules():  # every kernel of every module is compiled
        for name in dir(module):
            if name.endswith("_kernel"):
                assert any(s[1] is getattr(module, name) for s in specs), f"{module.__name__}.{name}"
    conv = [s for s in specs if s[1] is k.conv_kernel]
    flags = ("HAS_PRO", "HAS_BIAS", "HAS_RES", "RELU", "STATS")
    bf16_combos = {tuple(s[3][f] for f in flags) for s in conv if s[2]["x_ptr"] == "*bf16"}
    assert len(bf16_combos) == 32, "all prologue/epilogue flag combinations must compile in bf16"
    for dtype in ("bf16", "fp16", "fp32"):
        for f in flags:  # every flag on and off in every dtype
            assert {s[3][f] for s in conv if s[2]["x_ptr"] == f"*{dtype}"} == {False, True}, (dtype, f)
        for ks in (1, 3, 7):
            for even in (False, True):
                assert any(s[3]["KH"] == ks and s[3]["EVEN_K"] == even and s[2]["x_ptr"] == f"*{dtype}"
                           for s in conv), (dtype, ks, even)
    assert {s[3]["DOT_PRECISION"] for s in conv if s[2]["x_ptr"] == "*fp32"} == {"tf32", "ieee"}
    # conv_shortcut: projection (SC_MODE=1) and option A (2), sc prologue off and on, every dtype
    for dtype in ("bf16", "fp16", "fp32"):
        sc = [s[3] for s in conv if s[2]["x_ptr"] == f"*{dtype}" and s[3]["SC_MODE"]]
        assert {(c["SC_MODE"], c["SC_PRO"]) for c in sc} == {(1, False), (1, True), (2, False), (2, True)}, dtype
        assert {c["SC_EVEN_K"] for c in sc if c["SC_MODE"] == 1} == {False, True}, dtype
        assert {c["HAS_PRO"] for c in sc} == {False, True}, dtype
    assert not any(s[3]["SC_MODE"] and (s[3]["HAS_RES"] or s[3]["STATS"]) for s in conv), "conv_shortcut has neither"
    assert not any(s[3]["SC_PRO"] and not s[3]["SC_MODE"] for s in conv)
    # the launcher's config choices stay within what was compiled (block shapes aside)
    for cin_g, cout_g in ((3, 64), (4, 4), (64, 64), (256, 1024)):
        for esize in (2, 4):
            assert k.conv_configs(cin_g, cout_g, esize)


def test_backward_specialisation_list_covers_the_launcher():
    from fused_resnet.kernels import bn_act
    from fused_resnet.kernels import conv_backward as k

    specs = kernels.all_specializations()
    _check_names_and_signatures(specs)
    flags = ("HAS_PRO", "STATS", "RELU")
    for kern, ptr in ((k.conv_dgrad_kernel, "dy_ptr"), (k.conv_wgrad_kernel, "dy_ptr")):
        ss = [s for s in specs if s[1] is kern]
        for dtype in ("bf16", "fp16", "fp32"):
            combos = {tuple(s[3][f] for f in flags) for s in ss if s[2][ptr] == f"*{dtype}"}
            assert len(combos) == 8, (kern.__name__, dtype)  # every prologue/stats/relu combination
            for ks in (1, 3, 7):
                assert any(s[3]["KH"] == ks and s[2][ptr] == f"*{dtype}" for s in ss), (kern.__name__, dtype, ks)
    dg = [s for s in specs if s[1] is k.conv_dgrad_kernel]
    assert {(s[3]["NEED_DX"], s[3]["NEED_PSUM"]) for s in dg if s[3]["HAS_PRO"]} == {
        (True, True), (True, False), (False, True)}
    assert {s[3]["EVEN_K"] for s in dg} == {True, False}
    bn = [s for s in specs if s[1] is bn_act.bn_act_backward_kernel]
    assert {s[3]["CHANNEL_ON_COLS"] for s in bn} == {True, False}
    for cin_g, cout_g in ((3, 64), (4, 4), (64, 64), (256, 1024)):
        for esize in (2, 4):
            assert k.dgrad_configs(cin_g, cout_g, esize) and k.wgrad_configs(cin_g, cout_g, esize)


@pytest.mark.parametrize("half", [0, 1], ids=["first-half", "second-half"])
def test_compile_all_for_sm90(tmp_path, half):
    nshards = max(1, min(4, os.cpu_count() or 1))
    env = _env(tmp_path / "triton-cache")
    procs = [
        subprocess.Popen([sys.executable, "-m", "fused_resnet.kernels", str(half + 2 * i), str(2 * nshards), "90"],
                         cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(nshards)
    ]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    log = "\n".join(outputs)
    compiled = [line for line in log.splitlines() if line.startswith("ok ")]
    failed = [line for line in log.splitlines() if line.startswith("FAIL ")]
    assert all(p.returncode == 0 for p in procs) and not failed, log[-6000:]
    assert len(compiled) == len(kernels.all_specializations()[half::2]), log[-3000:]


_CHILD_TF32 = """
import json
from fused_resnet.kernels import all_specializations, compile_specialization
found = {}
for name, fn, sig, consts, options, attrs in all_specializations():
    if "DOT_PRECISION" not in consts:
        continue
    dtype = next(t for n, t in sig.items() if n.endswith("_ptr") and t in ("*fp32", "*fp16", "*bf16"))
    key = f"{fn.__name__} {dtype} {consts['DOT_PRECISION']}"
    if key not in found:
        ptx = compile_specialization((name, fn, sig, consts, options, attrs)).asm["ptx"]
        found[key] = "cvt.rna.tf32.f32" in ptx
print(json.dumps(found))
"""


def test_tf32_products_round_their_operands(tmp_path):
    """fp32 operands of a TF32 product are rounded to nearest (cvt.rna.tf32.f32) in every
    kernel with a dot; IEEE fp32 and 16-bit products have nothing to round."""
    out = subprocess.run([sys.executable, "-c", _CHILD_TF32], cwd=str(ROOT),
                         env=_env(tmp_path / "triton-cache"), capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    kernels_with_dot = {k.split()[0] for k in found}
    assert kernels_with_dot == {"conv_kernel", "conv_dgrad_kernel", "conv_wgrad_kernel"}, found
    for key, rounds in found.items():
        assert rounds == key.endswith("*fp32 tf32"), (key, found)
