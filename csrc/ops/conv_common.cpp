// The CUTLASS plumbing shared by ops/conv.cpp and ops/conv_backward.cpp (declared,
// with what each does, in ops/conv_common.h).
#include "ops/conv_common.h"

#include <ATen/cuda/CUDAContextLight.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>

#include "ops/common.h"

namespace fused_resnet {
namespace {

// Why stride, padding and dilation do not describe a convolution of x with weight
// ("" when they do), as torch.conv2d would refuse them.
std::string geometry_reason(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation) {
  if (stride.size() != 2 || padding.size() != 2 || dilation.size() != 2)
    return words("stride, padding and dilation must have 2 values each, got ", stride, ", ", padding, ", ", dilation);
  for (int i = 0; i < 2; ++i) {
    if (stride[i] < 1 || dilation[i] < 1 || padding[i] < 0)
      return words("stride ", stride, ", padding ", padding, ", dilation ", dilation,
                   ": strides and dilations must be positive, paddings non-negative");
    const int64_t extent = x.size(2 + i) + 2 * padding[i], span = dilation[i] * (weight.size(2 + i) - 1) + 1;
    if (extent < span)
      return words("the padded input (", extent, " pixels) is smaller than the dilated kernel (", span, ")");
  }
  return "";
}

}  // namespace

std::string operand_reason(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const auto st = x.scalar_type();
  if (st != at::kHalf && st != at::kBFloat16)
    return words("x has dtype ", st, "; the CUTLASS kernels run float16/bfloat16 tensor cores");
  if (weight.scalar_type() != st) return words("weight has dtype ", weight.scalar_type(), ", x has ", st);
  if (x.dim() != 4 || weight.dim() != 4)
    return words("x and weight must be 4-D, got ", x.dim(), "-D and ", weight.dim(), "-D");
  if (groups != 1) return words("groups=", groups, ": grouped convolutions are not instantiated");
  if (x.size(1) % 8 != 0 || weight.size(0) % 8 != 0)
    return words("channels in=", x.size(1), ", out=", weight.size(0),
                 ": both must be multiples of 8 (16-byte vector loads)");
  // An empty batch reads nothing (and PyTorch calls any empty tensor contiguous).
  if (x.numel() > 0 && (output_format(x) != at::MemoryFormat::ChannelsLast || !aligned16(x.const_data_ptr())))
    return "x is not a 16-byte aligned channels_last (NHWC) tensor";
  if (x.numel() >= std::numeric_limits<int32_t>::max()) return words("x has ", x.numel(), " elements (>= 2^31)");
  return geometry_reason(x, weight, stride, padding, dilation);
}

std::string device_reason(const at::Tensor& x) {
  if (!x.is_cuda()) return words("x is on ", x.device(), ", not a CUDA device");
  const auto* prop = at::cuda::getDeviceProperties(x.device().index());
  if (prop->major < 8) return words("compute capability ", prop->major, ".", prop->minor, " is below 8.0");
  return "";
}

ConvGeometry geometry(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                      at::IntArrayRef dilation, const char* op) {
  TORCH_CHECK(weight.size(1) == x.size(1), "fused_resnet_cuda::", op, ": weight must be [K, C, R, S] with C = ",
              x.size(1), " (the channels of x), got shape ", weight.sizes());
  ConvGeometry g;
  g.N = x.size(0), g.H = x.size(2), g.W = x.size(3), g.C = x.size(1);
  g.K = weight.size(0), g.R = weight.size(2), g.S = weight.size(3);
  g.sh = stride[0], g.sw = stride[1], g.ph = padding[0], g.pw = padding[1], g.dh = dilation[0], g.dw = dilation[1];
  g.P = (g.H + 2 * g.ph - g.dh * (g.R - 1) - 1) / g.sh + 1;
  g.Q = (g.W + 2 * g.pw - g.dw * (g.S - 1) - 1) / g.sw + 1;
  return g;
}

CutlassConvArgs conv_args(const ConvGeometry& g) {
  CutlassConvArgs a{};
  a.N = g.N, a.H = g.H, a.W = g.W, a.C = g.C, a.K = g.K, a.R = g.R, a.S = g.S, a.P = g.P, a.Q = g.Q;
  a.pad_h = g.ph, a.pad_w = g.pw, a.stride_h = g.sh, a.stride_w = g.sw, a.dil_h = g.dh, a.dil_w = g.dw;
  a.split_k = 1;
  return a;
}

at::Tensor krsc(const at::Tensor& weight) { return aligned_or_copy(weight.permute({0, 2, 3, 1}).contiguous()); }

at::Tensor kernel_vec(const at::Tensor& v, int64_t n, const at::Tensor& x, const char* op, const char* name,
                      std::uintptr_t bytes) {
  check_vec(v, op, name, n, x, "x");
  return aligned_or_copy(v.contiguous(), bytes);
}

at::Tensor mainloop_vec(const at::Tensor& v, const at::Tensor& x, const char* op, const char* name) {
  return kernel_vec(v, x.size(1), x, op, name, 16);
}

void run_kernel(const CutlassConvKernel& k, CutlassConvArgs& a, const at::Tensor& ref, const char* op) {
  at::Tensor ws;
  if (const size_t bytes = k.workspace_bytes(a); bytes > 0 && a.workspace == nullptr) {
    ws = at::empty({(int64_t)bytes}, ref.options().dtype(at::kByte));
    a.workspace = ws.mutable_data_ptr();
  }
  if (const char* why = k.run(a, c10::cuda::getCurrentCUDAStream())) {
    TORCH_CHECK(false, "fused_resnet_cuda::", op, ": ", k.name, " failed: ", why);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor slab_scratch(int64_t channels, int64_t slabs, const at::Tensor& ref, float** partial, float** groups) {
  at::Tensor t = at::empty({2 * channels * (slabs + ceil_div(slabs, kMergeChunksPerGroup))},
                           ref.options().dtype(at::kFloat));
  *partial = t.mutable_data_ptr<float>();
  *groups = *partial + 2 * slabs * channels;
  return t;
}

}  // namespace fused_resnet
