// Host entry points of the fused_resnet CUDA kernels, registered in bindings.cpp as
// torch.ops.fused_resnet_cuda.<name>. Each is defined in the host launcher file of its
// op group, csrc/ops/<group>.cpp, the groups of the Triton side's kernels/<group>.py
// (batch_stats, bn_finalize, bn_act, conv, conv_backward), but for conv_output_grad,
// whose kernel batch_stats_backward shares (csrc/ops/conv_output_grad.cpp). Tests:
// tests/cuda/test_<group>.py. Semantics: fused_resnet/reference.py; layouts:
// fused_resnet/_layout.py.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/List.h>
#include <c10/core/SymInt.h>

#include <optional>
#include <string>
#include <tuple>

namespace fused_resnet {

// ------------------------------------------------------------------ ops/batch_stats.cpp

std::tuple<at::Tensor, at::Tensor> batch_stats(const at::Tensor& x);

// dx of batch_stats: (dmean + 2 dvar (x - mean)) / M, in x's dtype and layout (the
// same pass, without dy).
at::Tensor batch_stats_backward(const at::Tensor& dmean, const at::Tensor& dvar, const at::Tensor& x,
                                const at::Tensor& mean);

// ------------------------------------------------------------------ ops/bn_finalize.cpp

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_finalize(const at::Tensor& mean, const at::Tensor& var,
                                                           const std::optional<at::Tensor>& weight,
                                                           const std::optional<at::Tensor>& bias, double eps);

// bn_finalize's gradients w.r.t. (mean, var, weight); dweight is empty without a weight.
std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_finalize_backward(
    const at::Tensor& dscale, const at::Tensor& dshift, const std::optional<at::Tensor>& dinvstd,
    const at::Tensor& mean, const std::optional<at::Tensor>& weight, const at::Tensor& scale,
    const at::Tensor& invstd);

void bn_update_running(const at::Tensor& mean, const at::Tensor& var, c10::SymInt count, at::Tensor& running_mean,
                       at::Tensor& running_var, const std::optional<at::Tensor>& num_batches_tracked,
                       std::optional<double> momentum);

// ------------------------------------------------------------------ ops/bn_act.cpp

at::Tensor bn_act(const at::Tensor& y, const at::Tensor& scale, const at::Tensor& shift,
                  const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& res_scale,
                  const std::optional<at::Tensor>& res_shift, bool relu);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_act_backward(
    const at::Tensor& dout, const at::Tensor& out, const at::Tensor& y, const at::Tensor& scale,
    const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& res_scale, bool relu,
    c10::List<bool> output_mask);

// ------------------------------------------------------------------ ops/conv_output_grad.cpp

// The output gradient of a convolution whose batch statistics were used:
// g = dy + dmean/M + 2 dvar (y - mean)/M, in y's dtype and layout (one pass,
// conv_output_grad.cu).
at::Tensor conv_output_grad(const at::Tensor& dy, const at::Tensor& dmean, const at::Tensor& dvar,
                            const at::Tensor& y, const at::Tensor& mean);

// ------------------------------------------------------------------ ops/conv.cpp

// fused_resnet::conv on CUTLASS (csrc/cutlass/) for the inputs conv_reason accepts:
// the BN + ReLU prologue (in_scale/in_shift) in the mainloop; bias, ReLU and
// residual in the epilogue (a ReLU after a residual only with a bias and no
// prologue); the statistics taken in the epilogue (without a residual; with one,
// read back from y by the batch_stats kernels). Not served: nothing to fuse.
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv(const at::Tensor& x, const at::Tensor& weight,
                                                    const std::optional<at::Tensor>& bias,
                                                    const std::optional<at::Tensor>& in_scale,
                                                    const std::optional<at::Tensor>& in_shift,
                                                    const std::optional<at::Tensor>& residual, at::IntArrayRef stride,
                                                    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                                    bool relu, bool stats);

// Why conv cannot take these inputs, in words; "" when it can.
std::string conv_reason(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        const std::optional<at::Tensor>& in_scale, const std::optional<at::Tensor>& residual,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                        bool relu, bool stats);

// ------------------------------------------------------------------ ops/conv_backward.cpp

// The weight gradient of conv_backward for a prologue convolution: g (the
// gradient of the convolution's output, x's dtype) against relu(x*in_scale +
// in_shift), recomputed in the CUTLASS wgrad mainloop; returned in weight's dtype.
at::Tensor conv_wgrad(const at::Tensor& g, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& in_scale,
                      const at::Tensor& in_shift, at::IntArrayRef stride, at::IntArrayRef padding,
                      at::IntArrayRef dilation);

// The data gradient of conv(relu(x*in_scale + in_shift), weight) for the output
// gradient g on CUTLASS (unit stride): dx and the gradients of in_scale and in_shift
// (ReLU mask and scale applied in the dgrad epilogue; fp32 in_scale/in_shift).
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_dgrad(const at::Tensor& g, const at::Tensor& x,
                                                          const at::Tensor& weight, const at::Tensor& in_scale,
                                                          const at::Tensor& in_shift, at::IntArrayRef stride,
                                                          at::IntArrayRef padding, at::IntArrayRef dilation);

// Why conv_dgrad cannot take these inputs, in words; "" when it can.
std::string conv_dgrad_reason(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

}  // namespace fused_resnet
