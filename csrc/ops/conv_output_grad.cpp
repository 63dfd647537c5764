// Host launcher of conv_output_grad.cu's kernel, which serves conv_output_grad (with
// dy) and batch_stats_backward (without; ops/batch_stats.cpp).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>

#include "ops.h"
#include "ops/common.h"

namespace fused_resnet {

at::Tensor run_conv_output_grad(const std::optional<at::Tensor>& dy_in, const at::Tensor& dmean,
                                const at::Tensor& dvar, const at::Tensor& y_in, const at::Tensor& mean, const char* op,
                                const char* y_name) {
  check_act(y_in, op, y_name);
  if (dy_in.has_value()) check_like(*dy_in, op, "dy", y_in, y_name);
  const int64_t C = y_in.size(1);
  check_vec(dmean, op, "dmean", C, y_in, y_name);
  check_vec(dvar, op, "dvar", C, y_in, y_name);
  check_vec(mean, op, "mean", C, y_in, y_name);
  const c10::cuda::CUDAGuard guard(y_in.device());
  const auto fmt = output_format(y_in);
  at::Tensor out = at::empty(y_in.sizes(), y_in.options().memory_format(fmt));
  if (y_in.numel() == 0) return out;
  const at::Tensor y = y_in.contiguous(fmt);
  const at::Tensor dy = dy_in.has_value() ? dy_in->contiguous(fmt) : at::Tensor();
  // dmean/dvar may be autograd's expanded (stride-0) gradients: made dense.
  const at::Tensor dm = dmean.contiguous(), dv = dvar.contiguous(), mu = mean.contiguous();
  ConvOutputGradArgs a;
  a.dtype = dtype_of(y.scalar_type());
  a.dy = dy.defined() ? dy.const_data_ptr() : nullptr;
  a.y = y.const_data_ptr();
  a.dmean = dm.const_data_ptr<float>();
  a.dvar = dv.const_data_ptr<float>();
  a.mean = mu.const_data_ptr<float>();
  a.inv_m = static_cast<float>(1.0 / static_cast<double>(y.numel() / C));
  a.out = out.mutable_data_ptr();
  a.shape = elementwise_shape(y, fmt, aligned16(a.y) && aligned16(a.out) && (a.dy == nullptr || aligned16(a.dy)));
  check_launch(launch_conv_output_grad(a, c10::cuda::getCurrentCUDAStream()), op);
  return out;
}

at::Tensor conv_output_grad(const at::Tensor& dy, const at::Tensor& dmean, const at::Tensor& dvar,
                            const at::Tensor& y, const at::Tensor& mean) {
  return run_conv_output_grad(dy, dmean, dvar, y, mean, "conv_output_grad", "y");
}

}  // namespace fused_resnet
