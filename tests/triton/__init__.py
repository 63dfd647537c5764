"""Tests of the triton backend, one file per fused_resnet op (as kernels/ and fused_resnet/backends/triton/)."""
