// Host entry points of the fused_resnet CUDA kernels (ops.cpp; registered in
// bindings.cpp as torch.ops.fused_resnet_cuda.<name>). Semantics:
// fused_resnet/reference.py; layouts: fused_resnet/_layout.py.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/List.h>
#include <c10/core/SymInt.h>

#include <optional>
#include <tuple>

namespace fused_resnet {

std::tuple<at::Tensor, at::Tensor> batch_stats(const at::Tensor& x);

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_finalize(const at::Tensor& mean, const at::Tensor& var,
                                                           const std::optional<at::Tensor>& weight,
                                                           const std::optional<at::Tensor>& bias, double eps);

void bn_update_running(const at::Tensor& mean, const at::Tensor& var, c10::SymInt count, at::Tensor& running_mean,
                       at::Tensor& running_var, const std::optional<at::Tensor>& num_batches_tracked,
                       std::optional<double> momentum);

at::Tensor bn_act(const at::Tensor& y, const at::Tensor& scale, const at::Tensor& shift,
                  const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& res_scale,
                  const std::optional<at::Tensor>& res_shift, bool relu);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_act_backward(
    const at::Tensor& dout, const at::Tensor& out, const at::Tensor& y, const at::Tensor& scale,
    const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& res_scale, bool relu,
    c10::List<bool> output_mask);

}  // namespace fused_resnet
