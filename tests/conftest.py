"""Test configuration shared by every test file.

Without a CUDA GPU the Triton kernels run under the interpreter: TRITON_INTERPRET
is set here before any test module imports triton, so the kernels' @triton.jit
decorators see it. On a GPU machine it is left as the caller set it.
"""
import os

import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped without one")
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
