// Ops served: conv_output_grad, and batch_stats_backward (the same pass without dy)
// (host launcher: ops/conv_output_grad.cpp, called by ops/batch_stats.cpp).
//
// conv_output_grad: the gradient that flows into an activation y through its batch
// statistics, plus an optional incoming gradient dy, in one elementwise pass:
//
//   mean = sum(y)/M, var = sum((y - mean)^2)/M   (M values per channel)
//   d mean/d y_i = 1/M, d var/d y_i = 2 (y_i - mean)/M (the mean term sums to 0)
//   out = [dy +] dmean/M + (2 dvar/M) * (y - mean)
//
// y - mean is formed before the multiply. Folding the mean into a per-channel
// shift (y * gb + (dmean/M - gb * mean)) would cancel for |mean| >> std: at
// mean/std = 1000 an fp32 result keeps about three fewer digits of the term.
// fp32 arithmetic rounded op by op (no FMA contraction), output in y's dtype and
// layout; NHWC/NCHW vector forms as in bn_act.cu.
#include "device.cuh"

namespace fused_resnet {
namespace {

template <typename T, int VEC, bool NHWC>
__global__ void __launch_bounds__(kThreads)
    conv_output_grad_kernel(const T* __restrict__ dy, const T* __restrict__ y, const float* __restrict__ dmean,
                            const float* __restrict__ dvar, const float* __restrict__ mean, float inv_m,
                            T* __restrict__ out, int64_t nvec, int64_t C, int64_t HW) {
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  for (int64_t v = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; v < nvec; v += step) {
    const int64_t e = v * VEC;
    float z[VEC], g[VEC];
    load_f<T, VEC>(y + e, z);
    if (dy != nullptr) load_f<T, VEC>(dy + e, g);
    // NHWC: the vector's VEC consecutive channels; NCHW: VEC pixels of one channel.
    const int64_t c0 = NHWC ? e % C : (e / HW) % C;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const int64_t c = NHWC ? c0 + k : c0;
      const float a = __fmul_rn(dmean[c], inv_m);
      const float b = __fmul_rn(__fmul_rn(2.f, dvar[c]), inv_m);
      const float t = __fadd_rn(a, __fmul_rn(b, __fsub_rn(z[k], mean[c])));
      z[k] = dy != nullptr ? __fadd_rn(g[k], t) : t;
    }
    store_f<T, VEC>(out + e, z);
  }
}

}  // namespace

cudaError_t launch_conv_output_grad(const ConvOutputGradArgs& a, cudaStream_t stream) {
  return dispatch_act(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const ElementwiseShape& s = a.shape;
    dispatch_elementwise<16 / sizeof(T)>(s, [&](auto vec, auto nhwc) {
      auto* kernel = conv_output_grad_kernel<T, decltype(vec)::value, decltype(nhwc)::value>;
      kernel<<<(unsigned)s.blocks, kThreads, 0, stream>>>(
          static_cast<const T*>(a.dy), static_cast<const T*>(a.y), a.dmean, a.dvar, a.mean, a.inv_m,
          static_cast<T*>(a.out), s.nvec, s.C, s.HW);
    });
  });
}

}  // namespace fused_resnet
