// Host launchers of bn_finalize, bn_finalize_backward and bn_update_running (kernels:
// bn_finalize.cu): checks of the per-channel vectors, fp32 copies of the BatchNorm
// parameters, allocation.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>

#include "ops.h"
#include "ops/common.h"

namespace fused_resnet {

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_finalize(const at::Tensor& mean_in, const at::Tensor& var_in,
                                                           const std::optional<at::Tensor>& weight,
                                                           const std::optional<at::Tensor>& bias, double eps) {
  constexpr const char* op = "bn_finalize";
  const int64_t C = stats_channels(mean_in, op);
  check_vec(var_in, op, "var", C, mean_in, "mean");
  const c10::cuda::CUDAGuard guard(mean_in.device());
  const at::Tensor w = weight.has_value() ? float_vec(*weight, op, "weight", C, mean_in, "mean") : at::Tensor();
  const at::Tensor b = bias.has_value() ? float_vec(*bias, op, "bias", C, mean_in, "mean") : at::Tensor();
  const at::Tensor mean = mean_in.contiguous(), var = var_in.contiguous();
  at::Tensor scale = at::empty({C}, mean.options());
  at::Tensor shift = at::empty({C}, mean.options());
  at::Tensor invstd = at::empty({C}, mean.options());
  if (C == 0) return {scale, shift, invstd};
  FinalizeArgs a;
  a.mean = mean.const_data_ptr<float>();
  a.var = var.const_data_ptr<float>();
  a.weight = w.defined() ? w.const_data_ptr<float>() : nullptr;
  a.bias = b.defined() ? b.const_data_ptr<float>() : nullptr;
  a.eps = (float)eps;
  a.C = C;
  a.scale = scale.mutable_data_ptr<float>();
  a.shift = shift.mutable_data_ptr<float>();
  a.invstd = invstd.mutable_data_ptr<float>();
  check_launch(launch_bn_finalize(a, c10::cuda::getCurrentCUDAStream()), op);
  return {scale, shift, invstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_finalize_backward(
    const at::Tensor& dscale_in, const at::Tensor& dshift_in, const std::optional<at::Tensor>& dinvstd,
    const at::Tensor& mean_in, const std::optional<at::Tensor>& weight, const at::Tensor& scale_in,
    const at::Tensor& invstd_in) {
  constexpr const char* op = "bn_finalize_backward";
  const int64_t C = stats_channels(mean_in, op);
  check_vec(dscale_in, op, "dscale", C, mean_in, "mean");
  check_vec(dshift_in, op, "dshift", C, mean_in, "mean");
  check_vec(scale_in, op, "scale", C, mean_in, "mean");
  check_vec(invstd_in, op, "invstd", C, mean_in, "mean");
  if (dinvstd.has_value()) check_vec(*dinvstd, op, "dinvstd", C, mean_in, "mean");
  const c10::cuda::CUDAGuard guard(mean_in.device());
  const at::Tensor w = weight.has_value() ? float_vec(*weight, op, "weight", C, mean_in, "mean") : at::Tensor();
  const at::Tensor di = dinvstd.has_value() ? dinvstd->contiguous() : at::Tensor();
  const at::Tensor dscale = dscale_in.contiguous(), dshift = dshift_in.contiguous(), mean = mean_in.contiguous();
  const at::Tensor scale = scale_in.contiguous(), invstd = invstd_in.contiguous();
  at::Tensor dmean = at::empty({C}, mean.options());
  at::Tensor dvar = at::empty({C}, mean.options());
  at::Tensor dweight = at::empty({w.defined() ? C : 0}, mean.options());
  if (C == 0) return {dmean, dvar, dweight};
  FinalizeBackwardArgs a;
  a.dscale = dscale.const_data_ptr<float>();
  a.dshift = dshift.const_data_ptr<float>();
  a.dinvstd = di.defined() ? di.const_data_ptr<float>() : nullptr;
  a.mean = mean.const_data_ptr<float>();
  a.weight = w.defined() ? w.const_data_ptr<float>() : nullptr;
  a.scale = scale.const_data_ptr<float>();
  a.invstd = invstd.const_data_ptr<float>();
  a.C = C;
  a.dmean = dmean.mutable_data_ptr<float>();
  a.dvar = dvar.mutable_data_ptr<float>();
  a.dweight = w.defined() ? dweight.mutable_data_ptr<float>() : nullptr;
  check_launch(launch_bn_finalize_backward(a, c10::cuda::getCurrentCUDAStream()), op);
  return {dmean, dvar, dweight};
}

void bn_update_running(const at::Tensor& mean_in, const at::Tensor& var_in, c10::SymInt count_sym,
                       at::Tensor& running_mean, at::Tensor& running_var,
                       const std::optional<at::Tensor>& num_batches_tracked, std::optional<double> momentum) {
  constexpr const char* op = "bn_update_running";
  const int64_t count = count_sym.expect_int();
  const int64_t C = stats_channels(mean_in, op);
  check_vec(var_in, op, "var", C, mean_in, "mean");
  TORCH_CHECK(count > 1, "fused_resnet_cuda::bn_update_running: count (values per channel in the batch) must be "
              "> 1 for the unbiased variance, got ", count);
  check_same_device(running_mean, op, "running_mean", mean_in, "mean");
  check_same_device(running_var, op, "running_var", mean_in, "mean");
  TORCH_CHECK(running_mean.dim() == 1 && running_mean.size(0) == C,
              "fused_resnet_cuda::bn_update_running: running_mean must have shape [", C, "] (", C,
              " channels, as mean has), got ", running_mean.sizes());
  TORCH_CHECK(running_var.dim() == 1 && running_var.size(0) == C,
              "fused_resnet_cuda::bn_update_running: running_var must have shape [", C, "] (", C,
              " channels, as mean has), got ", running_var.sizes());
  const auto st = running_mean.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              "fused_resnet_cuda::bn_update_running: running_mean must have dtype float32, float64, float16 or "
              "bfloat16, got ", st);
  TORCH_CHECK(running_var.scalar_type() == st, "fused_resnet_cuda::bn_update_running: running_var must have dtype ",
              st, " (the dtype of running_mean), got ", running_var.scalar_type());
  int64_t* nbt = nullptr;
  if (num_batches_tracked.has_value()) {
    const at::Tensor& t = *num_batches_tracked;
    check_same_device(t, op, "num_batches_tracked", mean_in, "mean");
    TORCH_CHECK(t.scalar_type() == at::kLong, "fused_resnet_cuda::bn_update_running: num_batches_tracked must have "
                "dtype int64, got ", t.scalar_type());
    TORCH_CHECK(t.numel() == 1, "fused_resnet_cuda::bn_update_running: num_batches_tracked must hold one value, "
                "got shape ", t.sizes());
    nbt = t.mutable_data_ptr<int64_t>();
  }
  const c10::cuda::CUDAGuard guard(mean_in.device());
  const at::Tensor mean = mean_in.contiguous(), var = var_in.contiguous();
  RunningArgs a;
  a.mean = mean.const_data_ptr<float>();
  a.var = var.const_data_ptr<float>();
  a.C = C;
  a.bessel = (float)((double)count / (double)(count - 1));  // a Python float, as the reference uses it
  a.dtype = dtype_of(st);
  a.rmean = running_mean.mutable_data_ptr();
  a.rm_stride = running_mean.stride(0);
  a.rvar = running_var.mutable_data_ptr();
  a.rv_stride = running_var.stride(0);
  a.nbt = nbt;
  a.has_momentum = momentum.has_value();
  a.momentum = momentum.value_or(0.0);
  check_launch(launch_bn_update_running(a, c10::cuda::getCurrentCUDAStream()), op);
}

}  // namespace fused_resnet
