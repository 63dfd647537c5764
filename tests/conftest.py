"""Test configuration shared by every test file.

Without a CUDA GPU the Triton kernels run under the interpreter: TRITON_INTERPRET
is set here before any test module imports triton, so the kernels' @triton.jit
decorators see it. On a GPU machine it is left as the caller set it.
Configurations the GPU tests tune go to a directory of the session's
(FUSED_RESNET_CACHE_DIR), never to the user's tuning cache.

tests/ and its subdirectories are packages (tests.triton.test_conv, ...), so files
in different directories may share a basename. pytest then puts the repository root
on sys.path, not tests/ (which would let tests/triton/ shadow the triton package);
the shared helpers are registered under their short name here, so every test file,
in any directory, imports them as ``from helpers import ...``.
"""
import os
import shutil
import sys
import tempfile

import pytest
import torch


_IS_XDIST_WORKER = False
_SESSION_CACHE_DIR = None


def pytest_configure(config):
    global _IS_XDIST_WORKER, _SESSION_CACHE_DIR
    _IS_XDIST_WORKER = hasattr(config, "workerinput")
    if "FUSED_RESNET_CACHE_DIR" not in os.environ:
        _SESSION_CACHE_DIR = tempfile.mkdtemp(prefix="fused-resnet-tests-")
        os.environ["FUSED_RESNET_CACHE_DIR"] = _SESSION_CACHE_DIR
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped without one")
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    # After TRITON_INTERPRET: the helpers may import triton.
    from . import helpers

    sys.modules["helpers"] = helpers


def pytest_unconfigure(config):
    if _SESSION_CACHE_DIR is not None:
        shutil.rmtree(_SESSION_CACHE_DIR, ignore_errors=True)
        del os.environ["FUSED_RESNET_CACHE_DIR"]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def no_tf32():
    """fp32 compared with fp32: no TF32 in the Triton kernels, cuDNN or matmuls."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture
def no_autotune_on_tiny_shapes(request, monkeypatch):
    # On a GPU the tiny-shape tests would time every configuration of every new key;
    # the heuristic configuration is enough for them. The @gpu tests keep autotuning.
    if "gpu" not in request.keywords:
        monkeypatch.setenv("FUSED_RESNET_TRITON_AUTOTUNE", "0")


def pytest_runtest_logreport(report):
    # FUSED_RESNET_FAIL_LOG=path appends each failure (node id and traceback) as it
    # happens, so a run cut short by a time limit still says what failed and why.
    # Under pytest-xdist only the controller writes (it also sees crashed workers).
    path = os.environ.get("FUSED_RESNET_FAIL_LOG")
    if not path or not report.failed or _IS_XDIST_WORKER:
        return
    with open(path, "a") as f:
        f.write(f"\n===== FAILED {report.nodeid} ({report.when})\n{report.longreprtext}\n")
