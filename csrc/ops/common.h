// What the host launchers of csrc/ops/ share: input validation (messages name the
// tensor, the expected and the received value), the memory-format rule of
// fused_resnet/_layout.py, and the launch plans of the streaming kernels (launch.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <optional>

#include "launch.h"

namespace fused_resnet {

// ------------------------------------------------------------------ checks

void check_cuda(const at::Tensor& t, const char* op, const char* name);

// `ref` is already known to be a CUDA tensor, so the message can name the device expected.
void check_same_device(const at::Tensor& t, const char* op, const char* name, const at::Tensor& ref,
                       const char* ref_name);

// A 4-D fp32/fp16/bf16 activation on a CUDA device.
void check_act(const at::Tensor& t, const char* op, const char* name);

// An activation that must match `ref` (device, dtype, shape).
void check_like(const at::Tensor& t, const char* op, const char* name, const at::Tensor& ref, const char* ref_name);

// A float32 per-channel vector of `channels` values on ref's device.
void check_vec(const at::Tensor& t, const char* op, const char* name, int64_t channels, const at::Tensor& ref,
               const char* ref_name);

// A per-channel vector of any floating dtype (gamma/beta), converted to fp32.
at::Tensor float_vec(const at::Tensor& t, const char* op, const char* name, int64_t channels, const at::Tensor& ref,
                     const char* ref_name);

// The channel count of a per-channel statistics op: mean must be a 1-D float32 CUDA vector.
int64_t stats_channels(const at::Tensor& mean, const char* op);

void check_launch(cudaError_t err, const char* op);

// ------------------------------------------------------------------ layout, dtypes, plans

// Mirrors fused_resnet/_layout.py output_format: channels_last when the tensor is
// (unambiguously) channels_last, the contiguous format otherwise.
at::MemoryFormat output_format(const at::Tensor& t);

DType dtype_of(at::ScalarType st);

inline bool aligned_to(const void* p, std::uintptr_t bytes) {
  return (reinterpret_cast<std::uintptr_t>(p) & (bytes - 1)) == 0;
}
inline bool aligned16(const void* p) { return aligned_to(p, 16); }

// t itself, or a fresh (aligned) copy in its layout where t starts off a multiple of
// `bytes`: a view into a larger tensor may start anywhere, and the CUTLASS kernels
// read their operands in aligned vectors.
at::Tensor aligned_or_copy(const at::Tensor& t, std::uintptr_t bytes = 16);

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int sm_count();

// NHWC (cvecs > 0 channel vectors per row): blocks of (tx, ty) tile channels x
// rows; NCHW (cvecs == 0): one channel per block. Either way about 4 blocks per
// SM, each reducing at least 8 units per thread.
Plan make_plan(int64_t units, int64_t unit_elems, int64_t cvecs, int64_t channels);

// An elementwise pass over y, already in layout fmt: 16-byte vectors when every tensor
// it touches is 16-byte aligned (`aligned`) and the channels (NHWC) or the pixels of a
// plane (NCHW) fill whole vectors; up to 16 blocks per SM.
ElementwiseShape elementwise_shape(const at::Tensor& y, at::MemoryFormat fmt, bool aligned);

at::Tensor empty_vec(const at::Tensor& ref);

// ------------------------------------------------------------------ shared launchers

// [dy +] dmean/M + 2 dvar (y - mean)/M in one pass (conv_output_grad.cu), checked and
// launched (ops/conv_output_grad.cpp): conv_output_grad with dy, batch_stats_backward
// without; op and y_name name the op and its activation in the messages.
at::Tensor run_conv_output_grad(const std::optional<at::Tensor>& dy, const at::Tensor& dmean,
                                const at::Tensor& dvar, const at::Tensor& y, const at::Tensor& mean, const char* op,
                                const char* y_name);

}  // namespace fused_resnet
