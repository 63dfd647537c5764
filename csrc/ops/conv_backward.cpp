// Host launchers of conv_wgrad and conv_dgrad (and conv_dgrad_reason), the CUTLASS pieces
// of conv_backward: the wgrad prologue convolution and its split-K reduction
// (wgrad_reduce.cu), the dgrad convolution and the sums of its epilogue (batch_stats.cu's
// slab sums). conv_backward's third piece, conv_output_grad, is ops/conv_output_grad.cpp.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>

#include "ops.h"
#include "ops/common.h"
#include "ops/conv_common.h"

namespace fused_resnet {
namespace {

KernelChoice choose_dgrad(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  if (std::string reason = operand_reason(x, weight, stride, padding, dilation, groups); !reason.empty())
    return {nullptr, reason};
  const ConvGeometry g = geometry(x, weight, stride, padding, dilation, "conv_dgrad");
  if (g.sh != 1 || g.sw != 1)
    return {nullptr, words("stride ", stride, ": only unit-stride data gradients are instantiated")};
  const ConvTile tile = g.C > 64 ? ConvTile::kWide : ConvTile::kNarrow;
  const auto& kernel = cutlass_conv_kernel(ConvKind::kDgradBnRelu, element_of(x.scalar_type()), tile);
  if (const char* why = kernel.can_run(conv_args(g))) return {nullptr, words(kernel.name, " cannot run it: ", why)};
  if (std::string reason = device_reason(x); !reason.empty())
    return {nullptr, reason};
  return {&kernel, "", g};
}

// The output gradient g of a convolution with geometry geo as the GEMMs read it: checked,
// channels_last, 16-byte aligned.
at::Tensor g_operand(const at::Tensor& g, const at::Tensor& x, const ConvGeometry& geo, const char* op) {
  check_act(g, op, "g");
  check_same_device(g, op, "g", x, "x");
  TORCH_CHECK(g.scalar_type() == x.scalar_type(), "fused_resnet_cuda::", op, ": g must have dtype ", x.scalar_type(),
              " (the dtype of x), got ", g.scalar_type());
  TORCH_CHECK(g.sizes() == at::IntArrayRef({geo.N, geo.K, geo.P, geo.Q}), "fused_resnet_cuda::", op, ": g must have "
              "the output's shape [", geo.N, ", ", geo.K, ", ", geo.P, ", ", geo.Q, "], got ", g.sizes());
  return aligned_or_copy(g.contiguous(at::MemoryFormat::ChannelsLast));
}

// Parallel split-K over N*P*Q for wgrad: enough slices for about two waves of its
// 128x128 tiles, each slice at least 1024 rows (a K loop long enough to pipeline).
// The slices run side by side; their partials take slices * K*R*S*C floats, at most
// about 2 * SMs * 128*128 (17 MB on 132 SMs) for problems of fewer tiles than that.
int wgrad_split(const ConvGeometry& g) {
  const int64_t tiles = ceil_div(g.K, 128) * ceil_div((int64_t)g.C * g.R * g.S, 128);
  const int64_t rows = (int64_t)g.N * g.P * g.Q;
  const int64_t want = ceil_div(2 * sm_count(), tiles);
  return (int)std::max<int64_t>(1, std::min<int64_t>(want, rows / 1024));
}

}  // namespace

at::Tensor conv_wgrad(const at::Tensor& g_in, const at::Tensor& x, const at::Tensor& weight,
                      const at::Tensor& in_scale, const at::Tensor& in_shift, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation) {
  constexpr const char* op = "conv_wgrad";
  check_act(x, op, "x");
  check_same_device(weight, op, "weight", x, "x");
  std::string reason = operand_reason(x, weight, stride, padding, dilation, 1);
  if (reason.empty()) reason = device_reason(x);
  TORCH_CHECK(reason.empty(), "fused_resnet_cuda::conv_wgrad: these inputs are not served: ", reason);
  const c10::cuda::CUDAGuard guard(x.device());
  const ConvGeometry geo = geometry(x, weight, stride, padding, dilation, op);
  const at::Tensor g = g_operand(g_in, x, geo, op);
  const at::Tensor scale = mainloop_vec(in_scale, x, op, "in_scale");
  const at::Tensor shift = mainloop_vec(in_shift, x, op, "in_shift");
  // An empty batch: a sum over no rows, without launching a GEMM whose K is 0.
  if (x.numel() == 0) return at::zeros(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
  CutlassConvArgs a = conv_args(geo);
  a.split_k = wgrad_split(geo);
  at::Tensor partial = at::empty({a.split_k, geo.K, geo.R, geo.S, geo.C}, x.options().dtype(at::kFloat));
  a.x = x.const_data_ptr();
  a.dy = g.const_data_ptr();
  a.scale = scale.const_data_ptr<float>();
  a.shift = shift.const_data_ptr<float>();
  a.out = partial.mutable_data_ptr();
  a.workspace = a.out;
  const auto& kernel = cutlass_conv_kernel(ConvKind::kWgradPrologue, element_of(x.scalar_type()), ConvTile::kWide);
  if (const char* why = kernel.can_run(a)) TORCH_CHECK(false, "fused_resnet_cuda::conv_wgrad: ", kernel.name,
                                                      " cannot run it: ", why);
  run_kernel(kernel, a, x, op);
  // The slices summed in order, in the weight's dtype and (contiguous) [K, C, R, S] layout.
  at::Tensor dw = at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
  WgradReduceArgs r{};
  r.dtype = dtype_of(weight.scalar_type());
  r.partial = partial.const_data_ptr<float>();
  r.slices = a.split_k;
  r.K = geo.K;
  r.RS = (int64_t)geo.R * geo.S;
  r.C = geo.C;
  r.dw = dw.mutable_data_ptr();
  check_launch(launch_wgrad_reduce(r, c10::cuda::getCurrentCUDAStream()), op);
  return dw;
}

std::string conv_dgrad_reason(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return choose_dgrad(x, weight, stride, padding, dilation, groups).reason;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_dgrad(const at::Tensor& g_in, const at::Tensor& x,
                                                          const at::Tensor& weight, const at::Tensor& in_scale,
                                                          const at::Tensor& in_shift, at::IntArrayRef stride,
                                                          at::IntArrayRef padding, at::IntArrayRef dilation) {
  constexpr const char* op = "conv_dgrad";
  check_act(x, op, "x");
  check_same_device(weight, op, "weight", x, "x");
  const KernelChoice choice = choose_dgrad(x, weight, stride, padding, dilation, 1);
  TORCH_CHECK(choice.kernel != nullptr, "fused_resnet_cuda::conv_dgrad: these inputs are not served: ", choice.reason);
  const c10::cuda::CUDAGuard guard(x.device());
  const ConvGeometry& geo = choice.geo;
  const at::Tensor g = g_operand(g_in, x, geo, op);
  const at::Tensor scale = mainloop_vec(in_scale, x, op, "in_scale");
  const at::Tensor shift = mainloop_vec(in_shift, x, op, "in_shift");
  const at::Tensor w = krsc(weight);
  const auto vec_opts = x.options().dtype(at::kFloat);
  at::Tensor dx = at::empty({geo.N, geo.C, geo.H, geo.W}, x.options().memory_format(output_format(x)));
  if (dx.numel() == 0) return {dx, at::zeros({geo.C}, vec_opts), at::zeros({geo.C}, vec_opts)};  // sums of no rows
  at::Tensor dscale = at::empty({geo.C}, vec_opts), dshift = at::empty({geo.C}, vec_opts);
  SlabSumArgs s{};
  s.C = geo.C;
  s.slabs = ceil_div((int64_t)geo.N * geo.H * geo.W, (int64_t)choice.kernel->stats_slab_rows);
  CutlassConvArgs a = conv_args(geo);
  const at::Tensor scratch = slab_scratch(s.C, s.slabs, x, &a.partial, &s.groups);
  a.x = x.const_data_ptr();
  a.dy = g.const_data_ptr();
  a.w = w.const_data_ptr();
  a.scale = scale.const_data_ptr<float>();
  a.shift = shift.const_data_ptr<float>();
  a.out = dx.mutable_data_ptr();
  s.partial = a.partial;
  s.sum0 = dscale.mutable_data_ptr<float>();
  s.sum1 = dshift.mutable_data_ptr<float>();
  run_kernel(*choice.kernel, a, x, op);
  check_launch(launch_slab_sums(s, c10::cuda::getCurrentCUDAStream()), op);
  return {dx, dscale, dshift};
}

}  // namespace fused_resnet
