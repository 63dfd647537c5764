// Host side of the fused_resnet CUDA ops: input validation (messages name the
// tensor, the expected and the received value), the memory-format rule of
// fused_resnet/_layout.py, allocation through PyTorch (at::empty, so the caching
// allocator and CUDA graphs see it), launch plans, and the launch on the current
// CUDA stream. The kernels are in the .cu files (interface: launch.h).
#include <ATen/cuda/CUDAContextLight.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>

#include "launch.h"
#include "ops.h"
#include "cutlass_conv.h"

namespace fused_resnet {
namespace {

// ------------------------------------------------------------------ checks

void check_cuda(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), "fused_resnet_cuda::", op, ": ", name, " must be a CUDA tensor, got device ", t.device());
}

// `ref` is already known to be a CUDA tensor, so the message can name the device expected.
void check_same_device(const at::Tensor& t, const char* op, const char* name, const at::Tensor& ref,
                       const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), "fused_resnet_cuda::", op, ": ", name, " must be on device ", ref.device(),
              " (the device of ", ref_name, "), got ", t.device());
}

// A 4-D fp32/fp16/bf16 activation on a CUDA device.
void check_act(const at::Tensor& t, const char* op, const char* name) {
  check_cuda(t, op, name);
  TORCH_CHECK(t.dim() == 4, "fused_resnet_cuda::", op, ": ", name, " must be a 4-D (N, C, H, W) tensor, got a ",
              t.dim(), "-D tensor of shape ", t.sizes());
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, "fused_resnet_cuda::", op, ": ", name,
              " must have dtype float32, float16 or bfloat16, got ", st);
}

// An activation that must match `ref` (device, dtype, shape).
void check_like(const at::Tensor& t, const char* op, const char* name, const at::Tensor& ref, const char* ref_name) {
  check_same_device(t, op, name, ref, ref_name);
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "fused_resnet_cuda::", op, ": ", name, " must have dtype ",
              ref.scalar_type(), " (the dtype of ", ref_name, "), got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == ref.sizes(), "fused_resnet_cuda::", op, ": ", name, " must have shape ", ref.sizes(),
              " (the shape of ", ref_name, "), got ", t.sizes());
}

// A float32 per-channel vector of `channels` values on ref's device.
void check_vec(const at::Tensor& t, const char* op, const char* name, int64_t channels, const at::Tensor& ref,
               const char* ref_name) {
  check_same_device(t, op, name, ref, ref_name);
  TORCH_CHECK(t.scalar_type() == at::kFloat, "fused_resnet_cuda::", op, ": ", name,
              " must be a float32 per-channel vector, got dtype ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == channels, "fused_resnet_cuda::", op, ": ", name, " must have shape [",
              channels, "] (", channels, " channels, as ", ref_name, " has), got ", t.sizes());
}

// A per-channel vector of any floating dtype (gamma/beta), converted to fp32.
at::Tensor float_vec(const at::Tensor& t, const char* op, const char* name, int64_t channels, const at::Tensor& ref,
                     const char* ref_name) {
  check_same_device(t, op, name, ref, ref_name);
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fused_resnet_cuda::", op, ": ", name,
              " must have a floating dtype, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == channels, "fused_resnet_cuda::", op, ": ", name, " must have shape [",
              channels, "] (", channels, " channels, as ", ref_name, " has), got ", t.sizes());
  return t.to(at::kFloat).contiguous();
}

// The channel count of a per-channel statistics op: mean must be a 1-D float32 CUDA vector.
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

// ------------------------------------------------------------------ layout, dtypes, plans

// Mirrors fused_resnet/_layout.py output_format: channels_last when the tensor is
// (unambiguously) channels_last, the contiguous format otherwise.
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

bool aligned_to(const void* p, std::uintptr_t bytes) { return (reinterpret_cast<std::uintptr_t>(p) & (bytes - 1)) == 0; }
bool aligned16(const void* p) { return aligned_to(p, 16); }

// t itself, or a fresh (aligned) copy in its layout where t starts off a multiple of
// `bytes`: a view into a larger tensor may start anywhere, and the CUTLASS kernels
// read their operands in aligned vectors.
at::Tensor aligned_or_copy(const at::Tensor& t, std::uintptr_t bytes = 16) {
  return aligned_to(t.const_data_ptr(), bytes) ? t : t.clone();
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

// NHWC (cvecs > 0 channel vectors per row): blocks of (tx, ty) tile channels x
// rows; NCHW (cvecs == 0): one channel per block. Either way about 4 blocks per
// SM, each reducing at least 8 units per thread.
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

// An elementwise pass over y, already in layout fmt: 16-byte vectors when every tensor
// it touches is 16-byte aligned (`aligned`) and the channels (NHWC) or the pixels of a
// plane (NCHW) fill whole vectors; up to 16 blocks per SM.
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

}  // namespace

// ------------------------------------------------------------------ batch_stats

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

// ------------------------------------------------------------------ bn_finalize

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

// ------------------------------------------------------------------ bn_finalize_backward

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

// ------------------------------------------------------------------ bn_update_running

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

// ------------------------------------------------------------------ bn_act

at::Tensor bn_act(const at::Tensor& y_in, const at::Tensor& scale_in, const at::Tensor& shift_in,
                  const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& res_scale,
                  const std::optional<at::Tensor>& res_shift, bool relu) {
  constexpr const char* op = "bn_act";
  check_act(y_in, op, "y");
  const int64_t C = y_in.size(1);
  check_vec(scale_in, op, "scale", C, y_in, "y");
  check_vec(shift_in, op, "shift", C, y_in, "y");
  TORCH_CHECK(res_scale.has_value() == res_shift.has_value(),
              "fused_resnet_cuda::bn_act: res_scale and res_shift must be given together, got res_scale ",
              res_scale.has_value() ? "given" : "None", " and res_shift ", res_shift.has_value() ? "given" : "None");
  TORCH_CHECK(!res_scale.has_value() || residual.has_value(),
              "fused_resnet_cuda::bn_act: res_scale/res_shift need a residual, got residual=None");
  const c10::cuda::CUDAGuard guard(y_in.device());
  const auto fmt = output_format(y_in);
  const at::Tensor y = y_in.contiguous(fmt);
  const at::Tensor scale = scale_in.contiguous(), shift = shift_in.contiguous();
  at::Tensor res, rscale, rshift;
  BnActArgs a;
  a.res_mode = kNoRes;
  if (residual.has_value()) {
    check_like(*residual, op, "residual", y_in, "y");
    res = residual->contiguous(fmt);
    a.res_mode = kRes;
    if (res_scale.has_value()) {
      check_vec(*res_scale, op, "res_scale", C, y_in, "y");
      check_vec(*res_shift, op, "res_shift", C, y_in, "y");
      rscale = res_scale->contiguous();
      rshift = res_shift->contiguous();
      a.res_mode = kResAffine;
    }
  }
  at::Tensor out = at::empty(y.sizes(), y.options().memory_format(fmt));
  if (y.numel() == 0) return out;
  a.dtype = dtype_of(y.scalar_type());
  a.y = y.const_data_ptr();
  a.scale = scale.const_data_ptr<float>();
  a.shift = shift.const_data_ptr<float>();
  a.res = res.defined() ? res.const_data_ptr() : nullptr;
  a.rscale = rscale.defined() ? rscale.const_data_ptr<float>() : nullptr;
  a.rshift = rshift.defined() ? rshift.const_data_ptr<float>() : nullptr;
  a.out = out.mutable_data_ptr();
  a.relu = relu;
  a.shape = elementwise_shape(y, fmt, aligned16(a.y) && aligned16(a.out) && (a.res == nullptr || aligned16(a.res)));
  check_launch(launch_bn_act(a, c10::cuda::getCurrentCUDAStream()), op);
  return out;
}

// ------------------------------------------------------------------ bn_act_backward

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_act_backward(
    const at::Tensor& dout_in, const at::Tensor& out_in, const at::Tensor& y_in, const at::Tensor& scale_in,
    const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& res_scale, bool relu,
    c10::List<bool> output_mask) {
  constexpr const char* op = "bn_act_backward";
  TORCH_CHECK(output_mask.size() == 6, "fused_resnet_cuda::bn_act_backward: output_mask must have 6 entries "
              "(y, scale, shift, residual, res_scale, res_shift), got ", output_mask.size());
  const bool need_y = output_mask[0], need_scale = output_mask[1], need_shift = output_mask[2],
             need_res = output_mask[3], need_rscale = output_mask[4], need_rshift = output_mask[5];
  check_act(y_in, op, "y");
  const int64_t C = y_in.size(1);
  check_like(dout_in, op, "dout", y_in, "y");
  check_like(out_in, op, "out", y_in, "y");
  check_vec(scale_in, op, "scale", C, y_in, "y");
  TORCH_CHECK(!(need_res || need_rscale) || residual.has_value(), "fused_resnet_cuda::bn_act_backward: output_mask "
              "asks for the gradient of residual or res_scale, but residual is None");
  TORCH_CHECK(!need_rscale || res_scale.has_value(), "fused_resnet_cuda::bn_act_backward: output_mask asks for the "
              "gradient of res_scale, but res_scale is None");
  const c10::cuda::CUDAGuard guard(y_in.device());
  const auto fmt = output_format(y_in);
  const at::Tensor y = y_in.contiguous(fmt);
  const at::Tensor dout = dout_in.contiguous(fmt);
  const at::Tensor out = relu ? out_in.contiguous(fmt) : out_in;
  const at::Tensor scale = scale_in.contiguous();
  at::Tensor res, rscale;
  at::MemoryFormat res_fmt = fmt;
  if (residual.has_value()) {
    check_like(*residual, op, "residual", y_in, "y");
    res_fmt = output_format(*residual);
    if (need_rscale) res = residual->contiguous(fmt);
  }
  if (res_scale.has_value()) {
    check_vec(*res_scale, op, "res_scale", C, y_in, "y");
    rscale = res_scale->contiguous();
  }
  const auto vec_opts = y.options().dtype(at::kFloat);
  at::Tensor dy = need_y ? at::empty(y.sizes(), y.options().memory_format(fmt)) : empty_vec(y);
  at::Tensor dres = need_res ? at::empty(y.sizes(), y.options().memory_format(fmt)) : empty_vec(y);
  at::Tensor dscale = need_scale ? at::empty({C}, vec_opts) : empty_vec(y);
  at::Tensor dshift = need_shift ? at::empty({C}, vec_opts) : empty_vec(y);
  at::Tensor drscale = need_rscale ? at::empty({C}, vec_opts) : empty_vec(y);
  at::Tensor drshift = need_rshift ? at::empty({C}, vec_opts) : empty_vec(y);

  BnActBwdArgs a;
  a.relu = relu;
  a.res_affine = rscale.defined();
  a.sum_g = need_shift || need_rshift;
  a.sum_gy = need_scale;
  a.sum_gr = need_rscale;
  const bool any_sum = a.sum_g || a.sum_gy || a.sum_gr;
  if (y.numel() == 0) {  // sums over nothing are zero
    for (at::Tensor* t : {&dscale, &dshift, &drscale, &drshift}) {
      if (t->numel() > 0) t->zero_();
    }
  } else if (need_y || need_res || any_sum) {
    a.dtype = dtype_of(y.scalar_type());
    a.dout = dout.const_data_ptr();
    a.out = relu ? out.const_data_ptr() : nullptr;
    a.y = need_scale ? y.const_data_ptr() : nullptr;
    a.res = res.defined() ? res.const_data_ptr() : nullptr;
    a.scale = scale.const_data_ptr<float>();
    a.rscale = a.res_affine ? rscale.const_data_ptr<float>() : nullptr;
    a.dy = need_y ? dy.mutable_data_ptr() : nullptr;
    a.dres = need_res ? dres.mutable_data_ptr() : nullptr;
    a.N = y.size(0), a.C = C, a.HW = y.size(2) * y.size(3);
    a.nhwc = fmt == at::MemoryFormat::ChannelsLast;
    const int V = vec_width(a.dtype);
    const bool aligned = aligned16(a.dout) && aligned16(a.out) && aligned16(a.y) && aligned16(a.res) &&
                         aligned16(a.dy) && aligned16(a.dres);
    a.vec = aligned && (a.nhwc ? C % V == 0 : a.HW % V == 0);
    if (a.nhwc) {
      a.plan = make_plan(a.N * a.HW, 1, a.vec ? C / V : C, C);
    } else {
      const int64_t unit = a.vec ? V : 1;
      a.plan = make_plan(a.N * a.HW / unit, unit, 0, C);
    }
    at::Tensor partial;
    if (any_sum) partial = at::empty({3, a.plan.nchunks, C}, vec_opts);
    a.partial = any_sum ? partial.mutable_data_ptr<float>() : nullptr;
    a.dshift = need_shift ? dshift.mutable_data_ptr<float>() : nullptr;
    a.drshift = need_rshift ? drshift.mutable_data_ptr<float>() : nullptr;
    a.dscale = need_scale ? dscale.mutable_data_ptr<float>() : nullptr;
    a.drscale = need_rscale ? drscale.mutable_data_ptr<float>() : nullptr;
    check_launch(launch_bn_act_backward(a, c10::cuda::getCurrentCUDAStream()), op);
  }
  if (need_res && res_fmt != fmt) dres = dres.contiguous(res_fmt);
  return {dy, dscale, dshift, dres, drscale, drshift};
}

// ------------------------------------------------------------------ conv_output_grad, batch_stats_backward

namespace {

// [dy +] dmean/M + 2 dvar (y - mean)/M (conv_output_grad.cu): one pass.
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

}  // namespace

at::Tensor conv_output_grad(const at::Tensor& dy, const at::Tensor& dmean, const at::Tensor& dvar,
                            const at::Tensor& y, const at::Tensor& mean) {
  return run_conv_output_grad(dy, dmean, dvar, y, mean, "conv_output_grad", "y");
}

at::Tensor batch_stats_backward(const at::Tensor& dmean, const at::Tensor& dvar, const at::Tensor& x,
                                const at::Tensor& mean) {
  return run_conv_output_grad(std::nullopt, dmean, dvar, x, mean, "batch_stats_backward", "x");
}

}  // namespace fused_resnet

// ------------------------------------------------------------------ conv, conv_wgrad, conv_dgrad (CUTLASS)

namespace fused_resnet {
namespace {

ConvElement element_of(at::ScalarType st) { return st == at::kHalf ? ConvElement::kFloat16 : ConvElement::kBFloat16; }

template <typename... Args>
std::string words(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

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

// Why the CUTLASS convolutions cannot take x and weight as operands of a convolution
// with this geometry, the device aside ("" when they can).
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

// Why the CUTLASS convolutions cannot run on x's device ("" when they can). Every reason
// function asks it last, so that on CPU or meta tensors it is the one objection left
// when the inputs are otherwise served (fused_resnet.tools.traffic.gpu_reason relies on that).
std::string device_reason(const at::Tensor& x) {
  if (!x.is_cuda()) return words("x is on ", x.device(), ", not a CUDA device");
  const auto* prop = at::cuda::getDeviceProperties(x.device().index());
  if (prop->major < 8) return words("compute capability ", prop->major, ".", prop->minor, " is below 8.0");
  return "";
}

struct ConvGeometry {
  int N, H, W, C, K, R, S, P, Q, ph, pw, sh, sw, dh, dw;
};

// The geometry of operands operand_reason accepts.
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

// The kernel for these inputs and their geometry, or why there is none (kernel == nullptr).
struct KernelChoice {
  const CutlassConvKernel* kernel = nullptr;
  std::string reason;
  ConvGeometry geo{};
};

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

// The filter as [K, R, S, C] (free for an aligned channels_last weight).
at::Tensor krsc(const at::Tensor& weight) { return aligned_or_copy(weight.permute({0, 2, 3, 1}).contiguous()); }

// A per-channel fp32 vector of n values, checked, as a kernel reads it: contiguous and
// aligned to `bytes` (the mainloop copies scale/shift in 16-byte vectors; the broadcast
// epilogue loads the bias 8 floats at a time, 32-byte aligned).
at::Tensor kernel_vec(const at::Tensor& v, int64_t n, const at::Tensor& x, const char* op, const char* name,
                      std::uintptr_t bytes) {
  check_vec(v, op, name, n, x, "x");
  return aligned_or_copy(v.contiguous(), bytes);
}

// A prologue's fp32 scale/shift, as the mainloop reads them.
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

// Scratch for an epilogue's [2, slabs, channels] slab partials, then the groups of the
// two-level merge; *partial and *groups point into it.
at::Tensor slab_scratch(int64_t channels, int64_t slabs, const at::Tensor& ref, float** partial, float** groups) {
  at::Tensor t = at::empty({2 * channels * (slabs + ceil_div(slabs, kMergeChunksPerGroup))},
                           ref.options().dtype(at::kFloat));
  *partial = t.mutable_data_ptr<float>();
  *groups = *partial + 2 * slabs * channels;
  return t;
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
