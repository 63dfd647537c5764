// Host side of the fused_resnet CUDA ops: input validation (messages name the
// tensor, the expected and the received value), the memory-format rule of
// fused_resnet/_layout.py, allocation through PyTorch (at::empty, so the caching
// allocator and CUDA graphs see it), launch plans, and the launch on the current
// CUDA stream. The kernels are in the .cu files (interface: launch.h).
#include <ATen/cuda/CUDAContextLight.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "launch.h"
#include "ops.h"

namespace fused_resnet {
namespace {

// ------------------------------------------------------------------ checks

void check_cuda(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), "fused_resnet_cuda::", op, ": ", name, " must be a CUDA tensor, got device ", t.device());
}

void check_same_device(const at::Tensor& t, const char* op, const char* name, const at::Tensor& ref,
                       const char* ref_name) {
  check_cuda(t, op, name);
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

bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

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
  check_cuda(mean_in, op, "mean");
  TORCH_CHECK(mean_in.dim() == 1, "fused_resnet_cuda::bn_finalize: mean must be a 1-D per-channel vector, got shape ",
              mean_in.sizes());
  const int64_t C = mean_in.size(0);
  check_vec(mean_in, op, "mean", C, mean_in, "mean");
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

// ------------------------------------------------------------------ bn_update_running

void bn_update_running(const at::Tensor& mean_in, const at::Tensor& var_in, c10::SymInt count_sym,
                       at::Tensor& running_mean, at::Tensor& running_var,
                       const std::optional<at::Tensor>& num_batches_tracked, std::optional<double> momentum) {
  constexpr const char* op = "bn_update_running";
  const int64_t count = count_sym.expect_int();
  check_cuda(mean_in, op, "mean");
  TORCH_CHECK(mean_in.dim() == 1,
              "fused_resnet_cuda::bn_update_running: mean must be a 1-D per-channel vector, got shape ",
              mean_in.sizes());
  const int64_t C = mean_in.size(0);
  check_vec(mean_in, op, "mean", C, mean_in, "mean");
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
  TORCH_CHECK(momentum.has_value() || nbt != nullptr, "fused_resnet_cuda::bn_update_running: momentum=None (a "
              "cumulative average) needs num_batches_tracked, got None");
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
  a.numel = y.numel();
  a.C = C;
  a.HW = y.size(2) * y.size(3);
  a.nhwc = fmt == at::MemoryFormat::ChannelsLast;
  a.relu = relu;
  const int V = vec_width(a.dtype);
  a.vec = aligned16(a.y) && aligned16(a.out) && (a.res == nullptr || aligned16(a.res)) &&
          (a.nhwc ? C % V == 0 : a.HW % V == 0);
  const int64_t nvec = a.vec ? a.numel / V : a.numel;
  a.blocks = std::max<int64_t>(1, std::min<int64_t>(ceil_div(nvec, kThreads), (int64_t)sm_count() * 16));
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

}  // namespace fused_resnet
