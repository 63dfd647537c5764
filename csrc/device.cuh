// Device helpers of the fused_resnet kernels: dtype dispatch, 16-byte vector
// packs, Welford/Chan merges and deterministic block reductions. No torch
// headers beyond c10's Half/BFloat16 (see launch.h).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "launch.h"

namespace fused_resnet {

// Calls f(T{}) with the C++ type of an activation dtype (fp32/fp16/bf16).
template <typename F>
cudaError_t dispatch_act(DType t, F&& f) {
  switch (t) {
    case DType::kFloat32: f(float{}); break;
    case DType::kFloat16: f(c10::Half{}); break;
    case DType::kBFloat16: f(c10::BFloat16{}); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

// Calls launch(VEC, NHWC), both std::integral_constant, with the vector width (V, or 1
// for single values) and layout of an elementwise pass.
template <int V, typename F>
void dispatch_elementwise(const ElementwiseShape& s, F&& launch) {
  using Nhwc = std::true_type;
  using Nchw = std::false_type;
  if (s.vec && s.nhwc) launch(std::integral_constant<int, V>{}, Nhwc{});
  else if (s.vec) launch(std::integral_constant<int, V>{}, Nchw{});
  else if (s.nhwc) launch(std::integral_constant<int, 1>{}, Nhwc{});
  else launch(std::integral_constant<int, 1>{}, Nchw{});
}

__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t ceil_div64(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ void load_f(const T* __restrict__ p, float (&out)[N]) {
  const Pack<T, N> pk = *reinterpret_cast<const Pack<T, N>*>(p);
#pragma unroll
  for (int k = 0; k < N; ++k) out[k] = static_cast<float>(pk.v[k]);
}

template <typename T, int N>
__device__ __forceinline__ void store_f(T* __restrict__ p, const float (&in)[N]) {
  Pack<T, N> pk;
#pragma unroll
  for (int k = 0; k < N; ++k) pk.v[k] = static_cast<T>(in[k]);
  *reinterpret_cast<Pack<T, N>*>(p) = pk;
}

// Welford step; n is the count after adding x.
__device__ __forceinline__ void welford_add(float n, float& mean, float& m2, float x) {
  const float d = x - mean;
  mean += d / n;
  m2 += d * (x - mean);
}

// Welford step with the reciprocal of the count precomputed (one division per
// row shared by the VEC channels of a thread).
__device__ __forceinline__ void welford_add_inv(float inv_n, float& mean, float& m2, float x) {
  const float d = x - mean;
  mean += d * inv_n;
  m2 += d * (x - mean);
}

// Chan et al.'s merge of (nb, meanb, m2b) into (n, mean, m2).
template <typename F>
__device__ __forceinline__ void chan_merge(F& n, F& mean, F& m2, F nb, F meanb, F m2b) {
  if (nb == F(0)) return;
  if (n == F(0)) {
    n = nb;
    mean = meanb;
    m2 = m2b;
    return;
  }
  const F nn = n + nb;
  const F d = meanb - mean;
  const F wb = nb / nn;
  mean = mean + d * wb;
  m2 = m2 + m2b + d * d * n * wb;
  n = nn;
}

// Tree-sum of NV values per thread over threadIdx.y, with a fixed pairing
// (deterministic); blockDim.y must be a power of two. smem holds
// blockDim.x * blockDim.y * NV values. Row ty == 0 ends with the sums.
template <typename F, int NV>
__device__ __forceinline__ void block_sum_y(F (&v)[NV], F* smem) {
  const int tx = threadIdx.x, ty = threadIdx.y, TX = blockDim.x;
  F* mine = smem + (ty * TX + tx) * NV;
#pragma unroll
  for (int k = 0; k < NV; ++k) mine[k] = v[k];
  __syncthreads();
  for (int s = blockDim.y / 2; s > 0; s >>= 1) {
    if (ty < s) {
      const F* other = smem + ((ty + s) * TX + tx) * NV;
#pragma unroll
      for (int k = 0; k < NV; ++k) {
        v[k] += other[k];
        mine[k] = v[k];
      }
    }
    __syncthreads();
  }
}

// The same for Welford states: one count per thread, NV means and M2s.
// smem holds blockDim.x * blockDim.y * (2*NV + 1) floats.
template <int NV>
__device__ __forceinline__ void block_welford_y(float& n, float (&mean)[NV], float (&m2)[NV], float* smem) {
  const int tx = threadIdx.x, ty = threadIdx.y, TX = blockDim.x;
  constexpr int stride = 2 * NV + 1;
  float* mine = smem + (ty * TX + tx) * stride;
  mine[0] = n;
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    mine[1 + k] = mean[k];
    mine[1 + NV + k] = m2[k];
  }
  __syncthreads();
  for (int s = blockDim.y / 2; s > 0; s >>= 1) {
    if (ty < s) {
      const float* other = smem + ((ty + s) * TX + tx) * stride;
      const float nb = other[0];
#pragma unroll
      for (int k = 0; k < NV; ++k) {
        float nk = n;
        chan_merge(nk, mean[k], m2[k], nb, other[1 + k], other[1 + NV + k]);
        mine[1 + k] = mean[k];
        mine[1 + NV + k] = m2[k];
      }
      n = n + nb;
      mine[0] = n;
    }
    __syncthreads();
  }
}

}  // namespace fused_resnet
