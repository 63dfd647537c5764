// Ops served: bn_act (host launcher: ops/bn_act.cpp).
//
// bn_act: out = [relu](y*scale + shift + residual*res_scale + res_shift), one
// elementwise pass in fp32 (rounded op by op like the reference: no FMA
// contraction), output in y's dtype and in the layout that
// fused_resnet/_layout.py output_format(y) gives.
//
// Vectorised 16-byte loads: NHWC vectors hold VEC consecutive channels of one
// row (needs C % VEC == 0); NCHW vectors hold VEC consecutive pixels of one
// channel plane (needs H*W % VEC == 0). Otherwise a scalar kernel runs.
#include "device.cuh"

namespace fused_resnet {
namespace {

template <typename T, int VEC, bool NHWC>
__global__ void __launch_bounds__(kThreads)
    bn_act_kernel(const T* __restrict__ y, const float* __restrict__ scale, const float* __restrict__ shift,
                  const T* __restrict__ res, const float* __restrict__ rscale, const float* __restrict__ rshift,
                  T* __restrict__ out, int64_t nvec, int64_t C, int64_t HW, int res_mode, bool relu) {
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  for (int64_t v = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; v < nvec; v += step) {
    const int64_t e = v * VEC;
    float z[VEC];
    load_f<T, VEC>(y + e, z);
    float r[VEC];
    if (res_mode != kNoRes) load_f<T, VEC>(res + e, r);
    if (NHWC) {
      const int64_t c0 = e % C;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        float t = __fadd_rn(__fmul_rn(z[k], scale[c0 + k]), shift[c0 + k]);
        if (res_mode == kResAffine) t = __fadd_rn(t, __fadd_rn(__fmul_rn(r[k], rscale[c0 + k]), rshift[c0 + k]));
        else if (res_mode == kRes) t = __fadd_rn(t, r[k]);
        z[k] = t;
      }
    } else {
      const int64_t c = (e / HW) % C;
      const float s = scale[c], b = shift[c];
      const float rs = res_mode == kResAffine ? rscale[c] : 0.f;
      const float rb = res_mode == kResAffine ? rshift[c] : 0.f;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        float t = __fadd_rn(__fmul_rn(z[k], s), b);
        if (res_mode == kResAffine) t = __fadd_rn(t, __fadd_rn(__fmul_rn(r[k], rs), rb));
        else if (res_mode == kRes) t = __fadd_rn(t, r[k]);
        z[k] = t;
      }
    }
    if (relu) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) z[k] = z[k] > 0.f ? z[k] : (z[k] != z[k] ? z[k] : 0.f);  // keeps NaN like torch.relu
    }
    store_f<T, VEC>(out + e, z);
  }
}

template <typename T>
void launch_typed(const BnActArgs& a, cudaStream_t stream) {
  const T* y = static_cast<const T*>(a.y);
  const T* r = static_cast<const T*>(a.res);
  T* out = static_cast<T*>(a.out);
  const ElementwiseShape& s = a.shape;
  dispatch_elementwise<16 / sizeof(T)>(s, [&](auto vec, auto nhwc) {
    bn_act_kernel<T, decltype(vec)::value, decltype(nhwc)::value><<<(unsigned)s.blocks, kThreads, 0, stream>>>(
        y, a.scale, a.shift, r, a.rscale, a.rshift, out, s.nvec, s.C, s.HW, a.res_mode, a.relu);
  });
}

}  // namespace

cudaError_t launch_bn_act(const BnActArgs& a, cudaStream_t stream) {
  return dispatch_act(a.dtype, [&](auto tag) { launch_typed<decltype(tag)>(a, stream); });
}

}  // namespace fused_resnet
