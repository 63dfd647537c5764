// The shared host helpers of csrc/ops/ (declared, with what each does, in ops/common.h).
#include "ops/common.h"

#include <ATen/cuda/CUDAContextLight.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <limits>

namespace fused_resnet {

void check_cuda(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), "fused_resnet_cuda::", op, ": ", name, " must be a CUDA tensor, got device ", t.device());
}

void check_same_device(const at::Tensor& t, const char* op, const char* name, const at::Tensor& ref,
                       const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), "fused_resnet_cuda::", op, ": ", name, " must be on device ", ref.device(),
              " (the device of ", ref_name, "), got ", t.device());
}

void check_act(const at::Tensor& t, const char* op, const char* name) {
  check_cuda(t, op, name);
  TORCH_CHECK(t.dim() == 4, "fused_resnet_cuda::", op, ": ", name, " must be a 4-D (N, C, H, W) tensor, got a ",
              t.dim(), "-D tensor of shape ", t.sizes());
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, "fused_resnet_cuda::", op, ": ", name,
              " must have dtype float32, float16 or bfloat16, got ", st);
}

void check_like(const at::Tensor& t, const char* op, const char* name, const at::Tensor& ref, const char* ref_name) {
  check_same_device(t, op, name, ref, ref_name);
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "fused_resnet_cuda::", op, ": ", name, " must have dtype ",
              ref.scalar_type(), " (the dtype of ", ref_name, "), got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == ref.sizes(), "fused_resnet_cuda::", op, ": ", name, " must have shape ", ref.sizes(),
              " (the shape of ", ref_name, "), got ", t.sizes());
}

void check_vec(const at::Tensor& t, const char* op, const char* name, int64_t channels, const at::Tensor& ref,
               const char* ref_name) {
  check_same_device(t, op, name, ref, ref_name);
  TORCH_CHECK(t.scalar_type() == at::kFloat, "fused_resnet_cuda::", op, ": ", name,
              " must be a float32 per-channel vector, got dtype ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == channels, "fused_resnet_cuda::", op, ": ", name, " must have shape [",
              channels, "] (", channels, " channels, as ", ref_name, " has), got ", t.sizes());
}

at::Tensor float_vec(const at::Tensor& t, const char* op, const char* name, int64_t channels, const at::Tensor& ref,
                     const char* ref_name) {
  check_same_device(t, op, name, ref, ref_name);
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fused_resnet_cuda::", op, ": ", name,
              " must have a floating dtype, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == channels, "fused_resnet_cuda::", op, ": ", name, " must have shape [",
              channels, "] (", channels, " channels, as ", ref_name, " has), got ", t.sizes());
  return t.to(at::kFloat).contiguous();
}

int64_t stats_channels(const at::Tensor& mean, const char* op) {
  check_cuda(mean, op, "mean");
  TORCH_CHECK(mean.dim() == 1, "fused_resnet_cuda::", op, ": mean must be a 1-D per-channel vector, got shape ",
              mean.sizes());
  check_vec(mean, op, "mean", mean.size(0), mean, "mean");
  return mean.size(0);
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "fused_resnet_cuda::", op, ": kernel launch failed: ", cudaGetErrorString(err));
}

at::MemoryFormat output_format(const at::Tensor& t) {
  if (t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return at::MemoryFormat::ChannelsLast;
  }
  return at::MemoryFormat::Contiguous;
}

DType dtype_of(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kDouble: return DType::kFloat64;
    default: TORCH_CHECK(false, "fused_resnet_cuda: unsupported dtype ", st);
  }
}

at::Tensor aligned_or_copy(const at::Tensor& t, std::uintptr_t bytes) {
  return aligned_to(t.const_data_ptr(), bytes) ? t : t.clone();
}

int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

Plan make_plan(int64_t units, int64_t unit_elems, int64_t cvecs, int64_t channels) {
  Plan p;
  if (cvecs > 0) {
    while (p.tx < cvecs && p.tx < 32) p.tx <<= 1;
    p.ty = kThreads / p.tx;
    p.gx = ceil_div(cvecs, p.tx);
  } else {
    p.tx = 1;
    p.ty = kThreads;
    p.gx = channels;
  }
  const int64_t target = std::max<int64_t>(1, (int64_t)sm_count() * 4 / std::max<int64_t>(p.gx, 1));
  p.units = units;
  p.unit_elems = unit_elems;
  p.upc = std::max(ceil_div(units, target), (int64_t)p.ty * 8);
  p.nchunks = std::max<int64_t>(1, ceil_div(units, p.upc));
  TORCH_INTERNAL_ASSERT(p.nchunks <= 65535 && p.gx <= std::numeric_limits<int32_t>::max());
  return p;
}

ElementwiseShape elementwise_shape(const at::Tensor& y, at::MemoryFormat fmt, bool aligned) {
  ElementwiseShape s;
  s.numel = y.numel();
  s.C = y.size(1);
  s.HW = y.size(2) * y.size(3);
  s.nhwc = fmt == at::MemoryFormat::ChannelsLast;
  const int V = vec_width(dtype_of(y.scalar_type()));
  s.vec = aligned && (s.nhwc ? s.C % V == 0 : s.HW % V == 0);
  s.nvec = s.vec ? s.numel / V : s.numel;
  s.blocks = std::max<int64_t>(1, std::min<int64_t>(ceil_div(s.nvec, kThreads), (int64_t)sm_count() * 16));
  return s;
}

at::Tensor empty_vec(const at::Tensor& ref) { return at::empty({0}, ref.options().dtype(at::kFloat)); }

}  // namespace fused_resnet
