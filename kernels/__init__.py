"""Triton kernels of fused-resnet, one module per ``fused_resnet::`` op they serve.

``conv`` (conv and conv_shortcut), ``conv_backward`` (dgrad, wgrad, the gradient at the
conv output, ordered partial sums), ``batch_stats`` (its forward and backward),
``bn_finalize`` (finalize, its backward, the running-statistics update) and ``bn_act``
(forward and backward); ``_common`` holds the device functions they share. The
launchers of ``fused_resnet/backends/triton/`` mirror these files.

This directory is the package ``fused_resnet.kernels``: setup.py installs it under that
name, and in a source tree ``fused_resnet/__init__.py`` registers it so. Kernel modules
import triton and each other only; importing this package imports neither.
"""
from __future__ import annotations

import importlib

MODULES = ("conv", "conv_backward", "batch_stats", "bn_finalize", "bn_act")


def modules() -> list:
    """The kernel modules, imported (and triton with them) on the first call."""
    return [importlib.import_module(f"{__name__}.{name}") for name in MODULES]


def all_specializations() -> list:
    """Every kernel module's ``specializations()``: (name, kernel, signature, constexprs,
    options, attrs) for each constexpr combination its launcher can produce."""
    return [spec for module in modules() for spec in module.specializations()]


def compile_specialization(spec, arch: int = 90):
    """Compile one specialisation for ``sm_<arch>`` without a GPU; returns the CompiledKernel."""
    import triton
    from triton.backends.compiler import GPUTarget

    name, fn, sig, consts, options, attrs = spec
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(options))
