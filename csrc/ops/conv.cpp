// Host launcher of conv (and conv_reason): the choice of a CUTLASS fprop kernel
// (csrc/cutlass/: prologue, bias + ReLU or statistics epilogue), its operands, and the
// merge of the statistics its epilogue takes (batch_stats.cu's merge kernel).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>

#include "ops.h"
#include "ops/common.h"
#include "ops/conv_common.h"

namespace fused_resnet {
namespace {

KernelChoice choose_fprop(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         const std::optional<at::Tensor>& in_scale, const std::optional<at::Tensor>& residual,
                         at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                         bool relu, bool stats) {
  // bias + ReLU (+ residual) without a prologue: the broadcast epilogue, which adds the
  // residual before the ReLU. Otherwise FpropEpilogue, whose bias and ReLU come before
  // the residual: no ReLU with a residual there.
  ConvKind kind;
  if (in_scale.has_value()) {
    kind = ConvKind::kFpropPrologue;
  } else if (bias.has_value() && relu) {
    kind = ConvKind::kFpropBiasRelu;
  } else if (!bias.has_value() && !relu && !residual.has_value() && !stats) {
    return {nullptr, "nothing to fuse (no prologue, bias, ReLU, residual or statistics): plain convolutions run "
                     "on cuDNN"};
  } else {
    kind = ConvKind::kFpropStats;
  }
  if (kind != ConvKind::kFpropBiasRelu && relu && residual.has_value())
    return {nullptr, "a ReLU after the residual is fused only with a bias and no prologue"};
  if (bias.has_value() && (bias->scalar_type() != at::kFloat || bias->dim() != 1 ||
                           bias->size(0) != weight.size(0) || !bias->is_contiguous()))
    return {nullptr, "the bias is not a contiguous float32 vector of the output channels"};
  if (residual.has_value() && (residual->scalar_type() != x.scalar_type() ||
                               output_format(*residual) != at::MemoryFormat::ChannelsLast ||
                               !aligned16(residual->const_data_ptr())))
    return {nullptr, "the residual is not a 16-byte aligned channels_last tensor of x's dtype"};
  if (std::string reason = operand_reason(x, weight, stride, padding, dilation, groups); !reason.empty())
    return {nullptr, reason};
  const ConvGeometry g = geometry(x, weight, stride, padding, dilation, "conv");
  const auto& kernel =
      cutlass_conv_kernel(kind, element_of(x.scalar_type()), g.K > 64 ? ConvTile::kWide : ConvTile::kNarrow);
  if (const char* why = kernel.can_run(conv_args(g))) return {nullptr, words(kernel.name, " cannot run it: ", why)};
  if (std::string reason = device_reason(x); !reason.empty())
    return {nullptr, reason};
  return {&kernel, "", g};
}

// The statistics of a convolution's output taken by its epilogue, in slabs of
// slab_rows rows of M = N*P*Q (pointers set by the caller).
SlabStatsArgs slab_stats_args(const ConvGeometry& g, int slab_rows) {
  SlabStatsArgs s{};
  s.C = g.K;
  s.rows = (int64_t)g.N * g.P * g.Q;
  s.slab_rows = slab_rows;
  s.slabs = ceil_div(s.rows, (int64_t)slab_rows);
  return s;
}

}  // namespace

std::string conv_reason(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        const std::optional<at::Tensor>& in_scale, const std::optional<at::Tensor>& residual,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                        bool relu, bool stats) {
  return choose_fprop(x, weight, bias, in_scale, residual, stride, padding, dilation, groups, relu, stats).reason;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv(const at::Tensor& x, const at::Tensor& weight,
                                                    const std::optional<at::Tensor>& bias,
                                                    const std::optional<at::Tensor>& in_scale,
                                                    const std::optional<at::Tensor>& in_shift,
                                                    const std::optional<at::Tensor>& residual, at::IntArrayRef stride,
                                                    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                                    bool relu, bool stats) {
  constexpr const char* op = "conv";
  check_act(x, op, "x");
  check_same_device(weight, op, "weight", x, "x");
  TORCH_CHECK(in_scale.has_value() == in_shift.has_value(), "fused_resnet_cuda::conv: in_scale and in_shift must be "
              "given together, got in_scale ", in_scale.has_value() ? "given" : "None", " and in_shift ",
              in_shift.has_value() ? "given" : "None");
  const KernelChoice choice =
      choose_fprop(x, weight, bias, in_scale, residual, stride, padding, dilation, groups, relu, stats);
  TORCH_CHECK(choice.kernel != nullptr, "fused_resnet_cuda::conv: these inputs are not served: ", choice.reason);
  const c10::cuda::CUDAGuard guard(x.device());
  const ConvGeometry& g = choice.geo;
  // channels_last: a served x is, unless the batch is empty (then the layout of the fake).
  at::Tensor y = at::empty({g.N, g.K, g.P, g.Q}, x.options().memory_format(output_format(x)));
  if (residual.has_value()) check_like(*residual, op, "residual", y, "the output");
  const at::Tensor w = krsc(weight);
  at::Tensor scale, shift, b;
  CutlassConvArgs a = conv_args(g);
  if (in_scale.has_value()) {
    scale = mainloop_vec(*in_scale, x, op, "in_scale");
    shift = mainloop_vec(*in_shift, x, op, "in_shift");
    a.scale = scale.const_data_ptr<float>();
    a.shift = shift.const_data_ptr<float>();
  }
  if (bias.has_value()) {
    b = kernel_vec(*bias, g.K, x, op, "bias", 32);
    a.bias = b.const_data_ptr<float>();
  }
  a.relu = relu;
  a.x = x.const_data_ptr();
  a.w = w.const_data_ptr();
  a.residual = residual.has_value() ? residual->const_data_ptr() : nullptr;
  a.out = y.mutable_data_ptr();
  // The epilogue takes the statistics where the kernel can (not of y + residual:
  // it reduces the accumulators); otherwise they are read back from y. An empty
  // batch launches nothing (batch_stats gives NaN statistics of no rows).
  const bool empty = y.numel() == 0;
  const int slab_rows = residual.has_value() || empty ? 0 : choice.kernel->stats_slab_rows;
  if (!stats || slab_rows == 0) {
    if (!empty) run_kernel(*choice.kernel, a, x, op);
    if (!stats) return {y, empty_vec(x), empty_vec(x)};
    auto [mean, var] = batch_stats(y);
    return {y, mean, var};
  }
  SlabStatsArgs s = slab_stats_args(g, slab_rows);
  const at::Tensor scratch = slab_scratch(s.C, s.slabs, x, &a.partial, &s.groups);
  s.partial = a.partial;
  at::Tensor mean = at::empty({g.K}, scratch.options()), var = at::empty({g.K}, scratch.options());
  s.mean = mean.mutable_data_ptr<float>();
  s.var = var.mutable_data_ptr<float>();
  run_kernel(*choice.kernel, a, x, op);
  check_launch(launch_stats_merge(s, c10::cuda::getCurrentCUDAStream()), op);
  return {y, mean, var};
}

}  // namespace fused_resnet
