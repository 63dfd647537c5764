"""Tests of the cuda backend's extension fused_resnet._C, one file per op group (as csrc/ops/ and csrc/*.cu)."""
