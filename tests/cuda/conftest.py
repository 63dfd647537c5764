"""Fixtures of the tests of fused_resnet._C: the extension loaded, or the reason it is not."""
from __future__ import annotations

import pytest

from fused_resnet import _ext
from fused_resnet.backends import cuda as cuda_backend


@pytest.fixture(scope="module")
def ns():
    """torch.ops.fused_resnet_cuda, with _C loaded; fails when _C should exist and does not."""
    # Imported here: pytest may load this file before tests/conftest.py registers the
    # `helpers` module that .common imports.
    from .common import _ext_expected

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


@pytest.fixture(scope="module")
def C():
    ok, reason = _ext.status()
    if not ok:
        pytest.skip(f"fused_resnet._C is not built: {reason} (tests/cuda/test_extension.py says whether it should be)")
    cuda_backend.ops()
    return _ext.load()
