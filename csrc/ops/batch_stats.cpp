// Host launchers of batch_stats and batch_stats_backward: checks, layout, launch plan
// and allocation; the kernels are batch_stats.cu's (batch_stats) and conv_output_grad.cu's
// (batch_stats_backward: conv_output_grad without dy).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>

#include <limits>

#include "ops.h"
#include "ops/common.h"

namespace fused_resnet {

std::tuple<at::Tensor, at::Tensor> batch_stats(const at::Tensor& x_in) {
  constexpr const char* op = "batch_stats";
  check_act(x_in, op, "x");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto fmt = output_format(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const auto opts = x.options().dtype(at::kFloat);
  at::Tensor mean = at::empty({C}, opts);
  at::Tensor var = at::empty({C}, opts);
  if (C == 0) return {mean, var};
  if (N * HW == 0) {  // like torch.var_mean over an empty set
    mean.fill_(std::numeric_limits<float>::quiet_NaN());
    var.fill_(std::numeric_limits<float>::quiet_NaN());
    return {mean, var};
  }
  StatsArgs a;
  a.dtype = dtype_of(x.scalar_type());
  a.x = x.const_data_ptr();
  a.N = N, a.C = C, a.HW = HW;
  a.nhwc = fmt == at::MemoryFormat::ChannelsLast;
  const int V = vec_width(a.dtype);
  if (a.nhwc) {
    a.vec = aligned16(a.x) && C % V == 0;
    a.plan = make_plan(N * HW, 1, a.vec ? C / V : C, C);
  } else {
    a.vec = aligned16(a.x) && HW % V == 0;
    const int64_t unit = a.vec ? V : 1;
    a.plan = make_plan(N * HW / unit, unit, 0, C);
  }
  at::Tensor partial = at::empty({2 * a.plan.nchunks + 1, C}, opts);  // means, M2s, shifts
  a.partial = partial.mutable_data_ptr<float>();
  a.shift = a.partial + 2 * a.plan.nchunks * C;
  a.mean = mean.mutable_data_ptr<float>();
  a.var = var.mutable_data_ptr<float>();
  check_launch(launch_batch_stats(a, c10::cuda::getCurrentCUDAStream()), op);
  return {mean, var};
}

at::Tensor batch_stats_backward(const at::Tensor& dmean, const at::Tensor& dvar, const at::Tensor& x,
                                const at::Tensor& mean) {
  return run_conv_output_grad(std::nullopt, dmean, dvar, x, mean, "batch_stats_backward", "x");
}

}  // namespace fused_resnet
