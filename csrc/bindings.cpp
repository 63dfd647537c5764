// Registration of the fused_resnet CUDA kernels.
//
// TORCH_LIBRARY(fused_resnet_cuda) defines the ops with the names and schemas
// of fused_resnet/op_list.py (those of the fused_resnet:: ops minus their `backend`
// argument, and the pieces of conv_backward); their CUDA kernels are registered
// below. Their fake (meta) implementations are op_list.py's, registered by the
// Python loader of this module (fused_resnet/backends/cuda.py, ops()): loading _C
// imports no Python module.
// PYBIND11_MODULE(_C) exposes built_with(), conv_reason() and conv_dgrad_reason() (why
// the CUTLASS convolutions cannot take given inputs) and the kernels as plain functions.
#include <torch/extension.h>
#include <torch/library.h>
#include <torch/version.h>

#include <string>
#include <vector>

#include "launch.h"
#include "ops.h"
#include "cutlass_conv.h"

namespace py = pybind11;

TORCH_LIBRARY(fused_resnet_cuda, m) {
  m.def("batch_stats(Tensor x) -> (Tensor, Tensor)");
  m.def("batch_stats_backward(Tensor dmean, Tensor dvar, Tensor x, Tensor mean) -> Tensor");
  m.def("bn_finalize(Tensor mean, Tensor var, Tensor? weight, Tensor? bias, float eps) -> (Tensor, Tensor, Tensor)");
  m.def(
      "bn_finalize_backward(Tensor dscale, Tensor dshift, Tensor? dinvstd, Tensor mean, Tensor? weight, "
      "Tensor scale, Tensor invstd) -> (Tensor, Tensor, Tensor)");
  m.def(
      "bn_update_running(Tensor mean, Tensor var, SymInt count, Tensor(a!) running_mean, Tensor(b!) running_var, "
      "Tensor(c!)? num_batches_tracked, float? momentum) -> ()");
  m.def(
      "bn_act(Tensor y, Tensor scale, Tensor shift, Tensor? residual, Tensor? res_scale, Tensor? res_shift, "
      "bool relu) -> Tensor");
  m.def(
      "bn_act_backward(Tensor dout, Tensor out, Tensor y, Tensor scale, Tensor? residual, Tensor? res_scale, "
      "bool relu, bool[] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "conv(Tensor x, Tensor weight, Tensor? bias, Tensor? in_scale, Tensor? in_shift, Tensor? residual, "
      "SymInt[] stride, SymInt[] padding, SymInt[] dilation, SymInt groups, bool relu, bool stats) -> (Tensor, Tensor, "
      "Tensor)");
  m.def(
      "conv_wgrad(Tensor g, Tensor x, Tensor weight, Tensor in_scale, Tensor in_shift, SymInt[] stride, "
      "SymInt[] padding, SymInt[] dilation) -> Tensor");
  m.def(
      "conv_dgrad(Tensor g, Tensor x, Tensor weight, Tensor in_scale, Tensor in_shift, SymInt[] stride, "
      "SymInt[] padding, SymInt[] dilation) -> (Tensor, Tensor, Tensor)");
  m.def("conv_output_grad(Tensor dy, Tensor dmean, Tensor dvar, Tensor y, Tensor mean) -> Tensor");
}

TORCH_LIBRARY_IMPL(fused_resnet_cuda, CUDA, m) {
  m.impl("batch_stats", &fused_resnet::batch_stats);
  m.impl("batch_stats_backward", &fused_resnet::batch_stats_backward);
  m.impl("bn_finalize", &fused_resnet::bn_finalize);
  m.impl("bn_finalize_backward", &fused_resnet::bn_finalize_backward);
  m.impl("bn_update_running", &fused_resnet::bn_update_running);
  m.impl("bn_act", &fused_resnet::bn_act);
  m.impl("bn_act_backward", &fused_resnet::bn_act_backward);
  m.impl("conv", &fused_resnet::conv);
  m.impl("conv_wgrad", &fused_resnet::conv_wgrad);
  m.impl("conv_dgrad", &fused_resnet::conv_dgrad);
  m.impl("conv_output_grad", &fused_resnet::conv_output_grad);
}

namespace {

std::string arch_name(int a) { return std::to_string(a / 100) + "." + std::to_string((a / 10) % 10); }

py::dict built_with() {
  py::dict d;
  const int v = fused_resnet::cuda_toolkit_version();
  d["cuda_version"] = std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
  std::vector<std::string> archs;
  for (int a : fused_resnet::compiled_archs()) archs.push_back(arch_name(a));
  d["arch_list"] = archs;
  d["torch_version"] = std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
                       std::to_string(TORCH_VERSION_PATCH);
  d["ops"] = std::vector<std::string>{"batch_stats", "batch_stats_backward", "bn_finalize", "bn_finalize_backward",
                                      "bn_update_running", "bn_act", "bn_act_backward", "conv", "conv_wgrad",
                                      "conv_dgrad", "conv_output_grad"};
  int count = 0;
  const fused_resnet::CutlassConvKernel* const* all = fused_resnet::cutlass_conv_kernels(&count);
  std::vector<std::string> kernels;
  for (int i = 0; i < count; ++i) kernels.push_back(all[i]->name);
  d["cutlass_kernels"] = kernels;
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() =
      "fused_resnet CUDA kernels (BatchNorm statistics, finalize, running update, BN+residual+ReLU, CUTLASS "
      "convolutions with BN+ReLU fused into the mainloop or bias+residual+ReLU into the epilogue)";
  m.def("built_with", &built_with,
        "Build information: CUDA toolkit version, SM architectures compiled in, torch version, ops.");
  m.def("batch_stats", &fused_resnet::batch_stats, py::arg("x"));
  m.def("batch_stats_backward", &fused_resnet::batch_stats_backward, py::arg("dmean"), py::arg("dvar"), py::arg("x"),
        py::arg("mean"));
  m.def("bn_finalize", &fused_resnet::bn_finalize, py::arg("mean"), py::arg("var"), py::arg("weight"),
        py::arg("bias"), py::arg("eps"));
  m.def("bn_finalize_backward", &fused_resnet::bn_finalize_backward, py::arg("dscale"), py::arg("dshift"),
        py::arg("dinvstd"), py::arg("mean"), py::arg("weight"), py::arg("scale"), py::arg("invstd"));
  m.def(
      "bn_update_running",
      [](const at::Tensor& mean, const at::Tensor& var, int64_t count, at::Tensor running_mean,
         at::Tensor running_var, std::optional<at::Tensor> num_batches_tracked, std::optional<double> momentum) {
        fused_resnet::bn_update_running(mean, var, c10::SymInt(count), running_mean, running_var,
                                        num_batches_tracked, momentum);
      },
      py::arg("mean"), py::arg("var"), py::arg("count"), py::arg("running_mean"), py::arg("running_var"),
      py::arg("num_batches_tracked"), py::arg("momentum"));
  m.def("bn_act", &fused_resnet::bn_act, py::arg("y"), py::arg("scale"), py::arg("shift"), py::arg("residual"),
        py::arg("res_scale"), py::arg("res_shift"), py::arg("relu"));
  m.def(
      "bn_act_backward",
      [](const at::Tensor& dout, const at::Tensor& out, const at::Tensor& y, const at::Tensor& scale,
         std::optional<at::Tensor> residual, std::optional<at::Tensor> res_scale, bool relu,
         const std::vector<bool>& output_mask) {
        c10::List<bool> mask;
        for (bool b : output_mask) mask.push_back(b);
        return fused_resnet::bn_act_backward(dout, out, y, scale, residual, res_scale, relu, std::move(mask));
      },
      py::arg("dout"), py::arg("out"), py::arg("y"), py::arg("scale"), py::arg("residual"), py::arg("res_scale"),
      py::arg("relu"), py::arg("output_mask"));
  m.def("conv_reason", &fused_resnet::conv_reason, py::arg("x"), py::arg("weight"), py::arg("bias"),
        py::arg("in_scale"), py::arg("residual"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
        py::arg("groups"), py::arg("relu"), py::arg("stats"),
        "Why fused_resnet_cuda::conv cannot take these inputs, in words ('' when it can).");
  m.def("conv", &fused_resnet::conv, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("in_scale"),
        py::arg("in_shift"), py::arg("residual"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
        py::arg("groups"), py::arg("relu"), py::arg("stats"));
  m.def("conv_wgrad", &fused_resnet::conv_wgrad, py::arg("g"), py::arg("x"), py::arg("weight"), py::arg("in_scale"),
        py::arg("in_shift"), py::arg("stride"), py::arg("padding"), py::arg("dilation"));
  m.def("conv_dgrad", &fused_resnet::conv_dgrad, py::arg("g"), py::arg("x"), py::arg("weight"), py::arg("in_scale"),
        py::arg("in_shift"), py::arg("stride"), py::arg("padding"), py::arg("dilation"));
  m.def("conv_output_grad", &fused_resnet::conv_output_grad, py::arg("dy"), py::arg("dmean"), py::arg("dvar"),
        py::arg("y"), py::arg("mean"));
  m.def("conv_dgrad_reason", &fused_resnet::conv_dgrad_reason, py::arg("x"), py::arg("weight"), py::arg("stride"),
        py::arg("padding"), py::arg("dilation"), py::arg("groups"),
        "Why fused_resnet_cuda::conv_dgrad cannot take these inputs, in words ('' when it can).");
}
