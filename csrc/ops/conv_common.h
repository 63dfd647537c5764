// The CUTLASS plumbing of the convolution launchers (ops/conv.cpp, ops/conv_backward.cpp):
// which operands the kernels of csrc/cutlass/ take and why not, the convolution's
// geometry, the operands as the kernels read them, and the launch.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <sstream>
#include <string>

#include "cutlass_conv.h"
#include "launch.h"

namespace fused_resnet {

inline ConvElement element_of(at::ScalarType st) {
  return st == at::kHalf ? ConvElement::kFloat16 : ConvElement::kBFloat16;
}

template <typename... Args>
std::string words(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

// Why the CUTLASS convolutions cannot take x and weight as operands of a convolution
// with this geometry, the device aside ("" when they can).
std::string operand_reason(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

// Why the CUTLASS convolutions cannot run on x's device ("" when they can). Every reason
// function asks it last, so that on CPU or meta tensors it is the one objection left
// when the inputs are otherwise served (fused_resnet.tools.traffic.gpu_reason relies on that).
std::string device_reason(const at::Tensor& x);

struct ConvGeometry {
  int N, H, W, C, K, R, S, P, Q, ph, pw, sh, sw, dh, dw;
};

// The geometry of operands operand_reason accepts.
ConvGeometry geometry(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                      at::IntArrayRef dilation, const char* op);

CutlassConvArgs conv_args(const ConvGeometry& g);

// The kernel for these inputs and their geometry, or why there is none (kernel == nullptr).
struct KernelChoice {
  const CutlassConvKernel* kernel = nullptr;
  std::string reason;
  ConvGeometry geo{};
};

// The filter as [K, R, S, C] (free for an aligned channels_last weight).
at::Tensor krsc(const at::Tensor& weight);

// A per-channel fp32 vector of n values, checked, as a kernel reads it: contiguous and
// aligned to `bytes` (the mainloop copies scale/shift in 16-byte vectors; the broadcast
// epilogue loads the bias 8 floats at a time, 32-byte aligned).
at::Tensor kernel_vec(const at::Tensor& v, int64_t n, const at::Tensor& x, const char* op, const char* name,
                      std::uintptr_t bytes);

// A prologue's fp32 scale/shift, as the mainloop reads them.
at::Tensor mainloop_vec(const at::Tensor& v, const at::Tensor& x, const char* op, const char* name);

void run_kernel(const CutlassConvKernel& k, CutlassConvArgs& a, const at::Tensor& ref, const char* op);

// Scratch for an epilogue's [2, slabs, channels] slab partials, then the groups of the
// two-level merge; *partial and *groups point into it.
at::Tensor slab_scratch(int64_t channels, int64_t slabs, const at::Tensor& ref, float** partial, float** groups);

}  // namespace fused_resnet
