"""Stand-ins that let a fused block step run without its kernels, telling what it would launch.

Shared by host_overhead.py (counts the launches and times the host side) and
launch_audit.py (lists every launch with its grid and bytes):

  triton_launches(report)   while the context lasts, every Triton kernel of the triton backend
                            is replaced by a stand-in whose ``kernel[grid](*args, **kwargs)``
                            calls report(name, grid, args, kwargs) instead of launching
  cuda_host_backend(...)    the cuda backend registered under another name, serving any tensors
                            (CPU, meta), with its calls into fused_resnet._C answered by their
                            fake implementations and reported (CudaOps)
  BackendDispatch(report)   a dispatch mode that runs every fused_resnet op on its backend's
                            implementation inside the mode, so that the aten operators the
                            backend calls are seen too (and that meta tensors reach the backend
                            rather than the op's fake), and reports each aten operator that
                            launches a kernel on a GPU
"""
from __future__ import annotations

import contextlib
from typing import Callable
from unittest import mock

from torch.utils._python_dispatch import TorchDispatchMode

from fused_resnet import backends, op_list
from fused_resnet.tools.traffic import gpu_reason, runs_kernel


class _TritonLaunch:
    """Stands in for a @triton.jit function: ``kernel[grid](...)`` reports instead of launching."""

    def __init__(self, name: str, report: Callable):
        self.name, self.report = name, report

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.report(self.name, grid, args, kwargs)
        return launch


@contextlib.contextmanager
def triton_launches(report: Callable):
    """Every ``*_kernel`` of the triton backend's kernel modules replaced by a _TritonLaunch."""
    from fused_resnet import kernels

    with contextlib.ExitStack() as stack:
        for mod in kernels.modules():
            for attr in dir(mod):
                if attr.endswith("_kernel"):
                    stack.enter_context(mock.patch.object(mod, attr, _TritonLaunch(attr, report)))
        yield


class CudaOps:
    """Stands in for torch.ops.fused_resnet_cuda: each op answers with its fake implementation
    (shapes only) and calls report(name, args, outputs)."""

    def __init__(self, report: Callable):
        self.report = report
        self.fakes = {name: op.fake for name, op in op_list.CUDA_OPS.items()}

    def __getattr__(self, name):
        fake = self.fakes[name]

        def call(*args):
            out = fake(*args)
            self.report(name, args, out)
            return out
        return call


@contextlib.contextmanager
def cuda_host_backend(report: Callable, name: str = "cuda-host"):
    """The cuda backend, registered as ``name`` while the context lasts, on any tensors, its
    _C ops answered by CudaOps(report). Which convolutions CUTLASS takes is _C.conv_reason's
    answer for bf16 channels_last meta copies of the operands, the device aside
    (tools.traffic.gpu_reason): the extension must be built."""
    from fused_resnet.backends import cuda

    attrs = {"name": name, "not_supported_reasons": lambda self, device=None, dtype=None: []}
    backend = type("CudaHostBackend", (cuda.CudaBackend,), attrs)()
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(cuda, "ops", lambda: CudaOps(report)))
        stack.enter_context(mock.patch.object(cuda, "conv_reason", gpu_reason(cuda.conv_reason)))
        stack.enter_context(mock.patch.object(cuda, "conv_dgrad_reason", gpu_reason(cuda.conv_dgrad_reason)))
        stack.enter_context(mock.patch.dict(backends.BACKENDS, {name: backend}))
        yield name


class BackendDispatch(TorchDispatchMode):
    """Runs each fused_resnet op on its backend inside the mode and calls report(func, args,
    kwargs, out) for every aten operator that would launch a kernel on a GPU (not views, not
    allocations). ``op`` is (func, args) of the fused_resnet op running, None between them."""

    def __init__(self, report: Callable):
        super().__init__()
        self.report = report
        self.op = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "fused_resnet":
            outer, self.op = self.op, (func, args)
            try:
                with self:
                    return getattr(backends.get(args[-1]), func._opname)(*args[:-1])
            finally:
                self.op = outer
        # Below autograd (inside the ops, under inference_mode) composite operators arrive whole:
        # decomposed inside the mode, contiguous() shows as the clone it makes, or as nothing.
        with self:
            out = func.decompose(*args, **(kwargs or {}))
        if out is not NotImplemented:
            return out
        out = func(*args, **(kwargs or {}))
        if runs_kernel(func):
            self.report(func, args, kwargs, out)
        return out
