// Ops served: batch_stats (launch_batch_stats; host launcher ops/batch_stats.cpp), and the
// reductions of the CUTLASS epilogues' slab partials: conv's statistics (launch_stats_merge,
// with batch_stats_merge_kernel; ops/conv.cpp) and conv_dgrad's dscale/dshift sums
// (launch_slab_sums, slab_sum_kernel; ops/conv_backward.cpp).
//
// batch_stats: per-channel mean and biased variance of a 4-D activation.
//
// Pass 1 (one kernel per layout): every block reduces a range of rows of a
// tile of channels with per-thread Welford updates, merges its threads with
// Chan's formula in a fixed tree, and writes (mean, M2) per channel into a
// [2, nchunks, C] partials buffer (the chunk's count is known from its size).
// Pass 2: one kernel merges the chunks of each channel in a fixed order in
// fp64. No atomics, so the result is deterministic.
//
// Shifted data: every value is reduced as x - K, K = the channel's first value
// (row 0), and K is added back to the mean in fp64 at the end. An fp32 Welford
// mean of 1e4 + N(0, 1) moves in steps of its ulp (1e-3) and loses ~3 digits
// of the variance; shifted, the values are O(sigma) and keep full precision.
#include "device.cuh"

namespace fused_resnet {
namespace {

// NHWC: x is [M, C] row-major. Block (tx, ty): tx over channel vectors of VEC
// channels, ty over rows; grid (gx, nchunks).
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    batch_stats_nhwc_kernel(const T* __restrict__ x, int64_t M, int64_t C, int64_t rows_per_chunk, int64_t nchunks,
                            float* __restrict__ partial, float* __restrict__ shift) {
  __shared__ float smem[kThreads * (2 * VEC + 1)];
  const int64_t c0 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * VEC;
  const int64_t r0 = (int64_t)blockIdx.y * rows_per_chunk;
  const int64_t r1 = min64(M, r0 + rows_per_chunk);
  const bool active = c0 < C;
  float n = 0.f, mean[VEC], m2[VEC], K[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) mean[k] = m2[k] = K[k] = 0.f;
  if (active) {
    load_f<T, VEC>(x + c0, K);  // row 0: the shift
    if (blockIdx.y == 0 && threadIdx.y == 0) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) shift[c0 + k] = K[k];
    }
    for (int64_t r = r0 + threadIdx.y; r < r1; r += blockDim.y) {
      float v[VEC];
      load_f<T, VEC>(x + r * C + c0, v);
      n += 1.f;
      const float inv_n = 1.f / n;
#pragma unroll
      for (int k = 0; k < VEC; ++k) welford_add_inv(inv_n, mean[k], m2[k], v[k] - K[k]);
    }
  }
  block_welford_y<VEC>(n, mean, m2, smem);
  if (threadIdx.y == 0 && active) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      partial[(int64_t)blockIdx.y * C + c0 + k] = mean[k];
      partial[(nchunks + blockIdx.y) * C + c0 + k] = m2[k];
    }
  }
}

// NCHW: channel c's values are N planes of HW contiguous elements. Block (1, 256)
// owns channel blockIdx.x and a range of "units" of VEC elements of the flattened
// (n, hw) index; HW % VEC == 0, so a unit never straddles two planes.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    batch_stats_nchw_kernel(const T* __restrict__ x, int64_t C, int64_t HW, int64_t units, int64_t units_per_chunk,
                            int64_t nchunks, float* __restrict__ partial, float* __restrict__ shift) {
  __shared__ float smem[kThreads * 3];
  const int64_t c = blockIdx.x;
  const int64_t hwv = HW / VEC;
  const int64_t u0 = (int64_t)blockIdx.y * units_per_chunk;
  const int64_t u1 = min64(units, u0 + units_per_chunk);
  const float K = static_cast<float>(x[c * HW]);  // the channel's first value: the shift
  if (blockIdx.y == 0 && threadIdx.y == 0) shift[c] = K;
  float n = 0.f, mean[1] = {0.f}, m2[1] = {0.f};
  for (int64_t u = u0 + threadIdx.y; u < u1; u += blockDim.y) {
    const int64_t img = u / hwv;
    const int64_t s = u - img * hwv;
    float v[VEC];
    load_f<T, VEC>(x + (img * C + c) * HW + s * VEC, v);
    if (VEC == 1) {
      n += 1.f;
      welford_add(n, mean[0], m2[0], v[0] - K);
    } else {  // the vector's own (mean, M2), two-pass in registers, then one Chan merge
      float sum = 0.f;
#pragma unroll
      for (int k = 0; k < VEC; ++k) sum += v[k] - K;
      const float mb = sum * (1.f / VEC);
      float m2b = 0.f;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float d = v[k] - K - mb;
        m2b += d * d;
      }
      chan_merge(n, mean[0], m2[0], (float)VEC, mb, m2b);
    }
  }
  block_welford_y<1>(n, mean, m2, smem);
  if (threadIdx.y == 0) {
    partial[(int64_t)blockIdx.y * C + c] = mean[0];
    partial[(nchunks + blockIdx.y) * C + c] = m2[0];
  }
}

// Pass 2 (and the merge of a convolution epilogue's slab statistics): block
// (32, 8), channel = blockIdx.y*32 + tx, group g = blockIdx.x of chunks
// [g*per_group, (g+1)*per_group) of a [2, nchunks, C] partials buffer (means, then
// M2s); the groups on grid x, which takes up to 2^31 - 1 of them. Thread ty merges
// the group's chunks ty, ty+8, ... in order, then a fixed tree merges the 8 rows;
// fp64 throughout. Chunk j holds the values of units [j*upc, (j+1)*upc) (clipped to
// `units`), unit_elems values each. Output: the group's (mean, M2) into group_out
// ([2, gridDim.x, C], rounded to fp32), or, when group_out is null (one group), the
// mean (+ shift[c] when shift is given) and the biased variance.
constexpr int kFx = 32, kFy = 8;

struct MergeShape {
  int64_t C, nchunks, per_group, units, upc, unit_elems;
};

__global__ void __launch_bounds__(kFx* kFy)
    batch_stats_merge_kernel(const float* __restrict__ partial, MergeShape m, const float* __restrict__ shift,
                             float* __restrict__ group_out, float* __restrict__ mean_out, float* __restrict__ var_out) {
  __shared__ double smem[kFx * kFy * 3];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = (int64_t)blockIdx.y * kFx + tx;
  const int64_t j0 = (int64_t)blockIdx.x * m.per_group, j1 = min64(m.nchunks, j0 + m.per_group);
  double n = 0.0, mean = 0.0, m2 = 0.0;
  if (c < m.C) {
    for (int64_t j = j0 + ty; j < j1; j += kFy) {
      const int64_t u0 = j * m.upc;
      const int64_t u1 = min64(m.units, u0 + m.upc);
      const double nb = u1 > u0 ? (double)((u1 - u0) * m.unit_elems) : 0.0;
      chan_merge<double>(n, mean, m2, nb, (double)partial[j * m.C + c], (double)partial[(m.nchunks + j) * m.C + c]);
    }
  }
  double* mine = smem + (ty * kFx + tx) * 3;
  mine[0] = n;
  mine[1] = mean;
  mine[2] = m2;
  __syncthreads();
  for (int s = kFy / 2; s > 0; s >>= 1) {
    if (ty < s) {
      const double* other = smem + ((ty + s) * kFx + tx) * 3;
      chan_merge<double>(n, mean, m2, other[0], other[1], other[2]);
      mine[0] = n;
      mine[1] = mean;
      mine[2] = m2;
    }
    __syncthreads();
  }
  if (ty != 0 || c >= m.C) return;
  if (group_out != nullptr) {
    group_out[(int64_t)blockIdx.x * m.C + c] = (float)mean;
    group_out[((int64_t)gridDim.x + blockIdx.x) * m.C + c] = (float)m2;
  } else {
    mean_out[c] = (float)((shift != nullptr ? (double)shift[c] : 0.0) + mean);
    var_out[c] = (float)(m2 / n);
  }
}

void launch_merge(const float* partial, const MergeShape& m, const float* shift, float* group_out, float* mean,
                  float* var, cudaStream_t stream) {
  const dim3 grid((unsigned)ceil_div64(m.nchunks, m.per_group), (unsigned)ceil_div64(m.C, kFx));
  batch_stats_merge_kernel<<<grid, dim3(kFx, kFy), 0, stream>>>(partial, m, shift, group_out, mean, var);
}

template <typename T>
void launch_typed(const StatsArgs& a, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  const T* x = static_cast<const T*>(a.x);
  const Plan& p = a.plan;
  if (a.nhwc) {
    const dim3 grid((unsigned)p.gx, (unsigned)p.nchunks), block(p.tx, p.ty);
    const int64_t M = a.N * a.HW;
    if (a.vec) {
      batch_stats_nhwc_kernel<T, V><<<grid, block, 0, stream>>>(x, M, a.C, p.upc, p.nchunks, a.partial, a.shift);
    } else {
      batch_stats_nhwc_kernel<T, 1><<<grid, block, 0, stream>>>(x, M, a.C, p.upc, p.nchunks, a.partial, a.shift);
    }
  } else {
    const dim3 grid((unsigned)a.C, (unsigned)p.nchunks), block(1, kThreads);
    if (a.vec) {
      batch_stats_nchw_kernel<T, V><<<grid, block, 0, stream>>>(x, a.C, a.HW, p.units, p.upc, p.nchunks, a.partial,
                                                                a.shift);
    } else {
      batch_stats_nchw_kernel<T, 1><<<grid, block, 0, stream>>>(x, a.C, a.HW, p.units, p.upc, p.nchunks, a.partial,
                                                                a.shift);
    }
  }
  if (cudaPeekAtLastError() != cudaSuccess) return;
  const MergeShape m{a.C, p.nchunks, p.nchunks, p.units, p.upc, p.unit_elems};
  launch_merge(a.partial, m, a.shift, nullptr, a.mean, a.var, stream);
}

// Fixed-order sums of slab partials: block (32, 8), channel = blockIdx.y*32 + tx,
// quantity q = blockIdx.z of the [2, nchunks, C] partials, group g = blockIdx.x of
// chunks [g*per_group, (g+1)*per_group). Thread ty adds the group's chunks ty, ty+8,
// ... in fp64, a fixed tree adds the 8 rows, and the group's sum goes to
// out[q][g*C + c] (rounded to fp32).
__global__ void __launch_bounds__(kFx* kFy)
    slab_sum_kernel(const float* __restrict__ partial, int64_t C, int64_t nchunks, int64_t per_group,
                    float* __restrict__ out0, float* __restrict__ out1) {
  __shared__ double smem[kFx * kFy];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = (int64_t)blockIdx.y * kFx + tx;
  const int64_t j0 = (int64_t)blockIdx.x * per_group, j1 = min64(nchunks, j0 + per_group);
  const float* src = partial + (int64_t)blockIdx.z * nchunks * C;
  double sum = 0.0;
  if (c < C) {
    for (int64_t j = j0 + ty; j < j1; j += kFy) sum += (double)src[j * C + c];
  }
  smem[ty * kFx + tx] = sum;
  __syncthreads();
  for (int s = kFy / 2; s > 0; s >>= 1) {
    if (ty < s) smem[ty * kFx + tx] += smem[(ty + s) * kFx + tx];
    __syncthreads();
  }
  if (ty == 0 && c < C) (blockIdx.z == 0 ? out0 : out1)[(int64_t)blockIdx.x * C + c] = (float)smem[tx];
}

void launch_sum(const float* partial, int64_t C, int64_t nchunks, int64_t per_group, float* out0, float* out1,
                cudaStream_t stream) {
  const dim3 grid((unsigned)ceil_div64(nchunks, per_group), (unsigned)ceil_div64(C, kFx), 2);
  slab_sum_kernel<<<grid, dim3(kFx, kFy), 0, stream>>>(partial, C, nchunks, per_group, out0, out1);
}

}  // namespace

cudaError_t launch_batch_stats(const StatsArgs& a, cudaStream_t stream) {
  return dispatch_act(a.dtype, [&](auto tag) { launch_typed<decltype(tag)>(a, stream); });
}

cudaError_t launch_slab_sums(const SlabSumArgs& a, cudaStream_t stream) {
  if (a.slabs <= kMergeChunksPerGroup) {
    launch_sum(a.partial, a.C, a.slabs, a.slabs, a.sum0, a.sum1, stream);
    return cudaGetLastError();
  }
  const int64_t groups = ceil_div64(a.slabs, kMergeChunksPerGroup);
  launch_sum(a.partial, a.C, a.slabs, kMergeChunksPerGroup, a.groups, a.groups + groups * a.C, stream);
  launch_sum(a.groups, a.C, groups, groups, a.sum0, a.sum1, stream);
  return cudaGetLastError();
}

cudaError_t launch_stats_merge(const SlabStatsArgs& a, cudaStream_t stream) {
  const MergeShape slabs{a.C, a.slabs, kMergeChunksPerGroup, a.rows, a.slab_rows, 1};
  if (a.slabs <= kMergeChunksPerGroup) {
    launch_merge(a.partial, slabs, nullptr, nullptr, a.mean, a.var, stream);
    return cudaGetLastError();
  }
  const int64_t groups = ceil_div64(a.slabs, kMergeChunksPerGroup);
  launch_merge(a.partial, slabs, nullptr, a.groups, nullptr, nullptr, stream);
  const MergeShape merged{a.C, groups, groups, a.rows, a.slab_rows * kMergeChunksPerGroup, 1};
  launch_merge(a.groups, merged, nullptr, nullptr, a.mean, a.var, stream);
  return cudaGetLastError();
}

}  // namespace fused_resnet
