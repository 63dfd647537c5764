// Host launchers of bn_act (kernel: bn_act.cu) and bn_act_backward (kernel:
// bn_act_backward.cu): checks, the memory-format rule, the elementwise shape or the
// reduction plan, allocation of the outputs output_mask asks for.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>

#include "ops.h"
#include "ops/common.h"

namespace fused_resnet {

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
