// Ops served: bn_finalize, bn_finalize_backward, bn_update_running (host launchers:
// ops/bn_finalize.cpp), one <op>_kernel each.
//
// bn_finalize: scale = gamma * rsqrt(var + eps), shift = beta - mean * scale, invstd.
// bn_finalize_backward: its gradients w.r.t. (mean, var, gamma), one thread a channel.
// bn_update_running: the in-place running-statistics update of nn.BatchNorm2d,
// exactly as fused_resnet/reference.py bn_update_running computes it, reading
// num_batches_tracked on the device (no host synchronisation: CUDA-graph safe).
#include <type_traits>

#include "device.cuh"

namespace fused_resnet {
namespace {

__global__ void bn_finalize_kernel(const float* __restrict__ mean, const float* __restrict__ var,
                                   const float* __restrict__ weight, const float* __restrict__ bias, float eps,
                                   int64_t C, float* __restrict__ scale, float* __restrict__ shift,
                                   float* __restrict__ invstd) {
  const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const float r = rsqrtf(__fadd_rn(var[c], eps));
  const float s = weight != nullptr ? __fmul_rn(r, weight[c]) : r;
  float t = __fmul_rn(-mean[c], s);
  if (bias != nullptr) t = __fadd_rn(t, bias[c]);
  invstd[c] = r;
  scale[c] = s;
  shift[c] = t;
}

// Derivation: fused_resnet/reference.py bn_finalize_backward. dst = dscale - dshift*mean;
// dgamma = dst*r; dr = dst*gamma (or dst) + dinvstd; dmean = -dshift*scale; dvar = -dr/2 * r^3.
__global__ void bn_finalize_backward_kernel(const float* __restrict__ dscale, const float* __restrict__ dshift,
                                            const float* __restrict__ dinvstd, const float* __restrict__ mean,
                                            const float* __restrict__ weight, const float* __restrict__ scale,
                                            const float* __restrict__ invstd, int64_t C, float* __restrict__ dmean,
                                            float* __restrict__ dvar, float* __restrict__ dweight) {
  const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const float r = invstd[c];
  const float dst = __fsub_rn(dscale[c], __fmul_rn(dshift[c], mean[c]));
  float dr = dst;
  if (weight != nullptr) {
    dr = __fmul_rn(dst, weight[c]);
    dweight[c] = __fmul_rn(dst, r);
  }
  if (dinvstd != nullptr) dr = __fadd_rn(dr, dinvstd[c]);
  dmean[c] = __fmul_rn(-dshift[c], scale[c]);
  dvar[c] = __fmul_rn(__fmul_rn(dr, -0.5f), __fmul_rn(__fmul_rn(r, r), r));
}

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }

// One block. Mirrors the reference's type promotion: running * (1 - factor) in
// the running dtype, the batch term in fp32, their sum in the wider of the two.
// factor: momentum; 1/num_batches_tracked without one; 0 with neither (momentum is
// then passed as 0), as the reference.
template <typename T>
__global__ void bn_update_running_kernel(const float* __restrict__ mean, const float* __restrict__ var, int64_t C,
                                         float bessel, T* __restrict__ rmean, int64_t rm_stride, T* __restrict__ rvar,
                                         int64_t rv_stride, int64_t* __restrict__ nbt, bool has_momentum,
                                         double momentum) {
  using A = typename std::conditional<std::is_same<T, double>::value, double, float>::type;
  double factor = momentum;
  if (nbt != nullptr) {
    const int64_t tracked = *nbt + 1;  // every thread reads the old value before thread 0 writes
    __syncthreads();
    if (threadIdx.x == 0) *nbt = tracked;
    if (!has_momentum) factor = 1.0 / (double)tracked;
  }
  const A keep = (A)(1.0 - factor);
  const float take = (float)factor;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const T a_m = (T)mul_rn((A)rmean[c * rm_stride], keep);
    const float b_m = __fmul_rn(mean[c], take);
    rmean[c * rm_stride] = (T)add_rn((A)a_m, (A)b_m);
    const T a_v = (T)mul_rn((A)rvar[c * rv_stride], keep);
    const float b_v = __fmul_rn(__fmul_rn(var[c], bessel), take);
    rvar[c * rv_stride] = (T)add_rn((A)a_v, (A)b_v);
  }
}

}  // namespace

cudaError_t launch_bn_finalize(const FinalizeArgs& a, cudaStream_t stream) {
  const int threads = 256;
  bn_finalize_kernel<<<(unsigned)ceil_div64(a.C, threads), threads, 0, stream>>>(a.mean, a.var, a.weight, a.bias, a.eps,
                                                                                 a.C, a.scale, a.shift, a.invstd);
  return cudaGetLastError();
}

cudaError_t launch_bn_finalize_backward(const FinalizeBackwardArgs& a, cudaStream_t stream) {
  const int threads = 256;
  bn_finalize_backward_kernel<<<(unsigned)ceil_div64(a.C, threads), threads, 0, stream>>>(
      a.dscale, a.dshift, a.dinvstd, a.mean, a.weight, a.scale, a.invstd, a.C, a.dmean, a.dvar, a.dweight);
  return cudaGetLastError();
}

cudaError_t launch_bn_update_running(const RunningArgs& a, cudaStream_t stream) {
  auto launch = [&](auto tag) {
    using T = decltype(tag);
    bn_update_running_kernel<T><<<1, 256, 0, stream>>>(a.mean, a.var, a.C, a.bessel, static_cast<T*>(a.rmean),
                                                       a.rm_stride, static_cast<T*>(a.rvar), a.rv_stride, a.nbt,
                                                       a.has_momentum, a.momentum);
  };
  switch (a.dtype) {
    case DType::kFloat32: launch(float{}); break;
    case DType::kFloat64: launch(double{}); break;
    case DType::kFloat16: launch(c10::Half{}); break;
    case DType::kBFloat16: launch(c10::BFloat16{}); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

// ------------------------------------------------------------------ build info

std::vector<int> compiled_archs() {
#ifdef __CUDA_ARCH_LIST__
  return {__CUDA_ARCH_LIST__};
#else
  return {};
#endif
}

int cuda_toolkit_version() { return __CUDACC_VER_MAJOR__ * 1000 + __CUDACC_VER_MINOR__ * 10; }

}  // namespace fused_resnet
