// Ops served: conv_wgrad, the last step (host launcher: ops/conv_backward.cpp).
//
// wgrad_reduce: the weight gradient from the parallel split-K slices of the wgrad
// convolution (cutlass_conv.h), summed in a fixed order and written in the weight's
// dtype and layout in the same pass.
//
// partial is [slices, K, R, S, C] fp32, one slice per range of N*P*Q rows; dw is
// [K, C, R, S]. A block is kLanes x kWays threads: 32 consecutive partial elements
// (coalesced reads, the bulk of the traffic) times kWays slice lanes; lane j sums the
// slices j, j + kWays, ... in increasing order, then lane 0 adds the kWays sums in
// order. The order depends only on the slice count: repeatable bit for bit.
#include "device.cuh"

namespace fused_resnet {
namespace {

constexpr int kLanes = 32;
constexpr int kWays = 8;

template <typename T>
__global__ void __launch_bounds__(kLanes * kWays)
    wgrad_reduce_kernel(const float* __restrict__ partial, int64_t slices, int64_t K, int64_t RS, int64_t C,
                        T* __restrict__ dw) {
  __shared__ float sums[kWays][kLanes];
  const int64_t elems = K * RS * C;
  const int64_t i = (int64_t)blockIdx.x * kLanes + threadIdx.x;  // index in [K, R, S, C]
  float acc = 0.f;
  if (i < elems) {
    for (int64_t s = threadIdx.y; s < slices; s += kWays) acc += partial[s * elems + i];
  }
  sums[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y != 0 || i >= elems) return;
  float total = 0.f;
#pragma unroll
  for (int j = 0; j < kWays; ++j) total += sums[j][threadIdx.x];
  const int64_t c = i % C, krs = i / C, rs = krs % RS, k = krs / RS;
  dw[(k * C + c) * RS + rs] = static_cast<T>(total);
}

}  // namespace

cudaError_t launch_wgrad_reduce(const WgradReduceArgs& a, cudaStream_t stream) {
  return dispatch_act(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t blocks = ceil_div64(a.K * a.RS * a.C, kLanes);
    wgrad_reduce_kernel<T><<<(unsigned)blocks, dim3(kLanes, kWays), 0, stream>>>(
        a.partial, a.slices, a.K, a.RS, a.C, static_cast<T*>(a.dw));
  });
}

}  // namespace fused_resnet
