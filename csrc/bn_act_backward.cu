// Ops served: bn_act_backward (host launcher: ops/bn_act.cpp).
//
// bn_act_backward: the six gradients of bn_act (fused_resnet/reference.py
// bn_act_backward) in one pass over the activations:
//   g = dout where out > 0 or NaN, else 0 (or dout),  dy = g*scale,  dresidual = g*res_scale (or g),
//   dscale = sum g*y,  dshift = dres_shift = sum g,  dres_scale = sum g*residual.
// Elementwise gradients are written as the rows stream by; the per-channel sums
// go through a [3, nchunks, C] partials buffer and an ordered fp64 merge (no
// atomics: deterministic). Outputs that output_mask does not ask for come back
// as empty fp32 tensors and cost no work.
#include "device.cuh"

namespace fused_resnet {
namespace {

struct BwdFlags {
  bool relu, need_y, need_res, res_affine, sum_g, sum_gy, sum_gr;
};

// Quantities of the partials buffer.
constexpr int kQg = 0, kQgy = 1, kQgr = 2;

template <typename T, int VEC>
__device__ __forceinline__ void bwd_vector(const T* __restrict__ dout, const T* __restrict__ out,
                                           const T* __restrict__ y, const T* __restrict__ res, T* __restrict__ dy,
                                           T* __restrict__ dres, int64_t off, const float (&sc)[VEC],
                                           const float (&rs)[VEC], const BwdFlags& f, float (&acc)[3 * VEC]) {
  float g[VEC];
  load_f<T, VEC>(dout + off, g);
  if (f.relu) {
    float o[VEC];
    load_f<T, VEC>(out + off, o);
#pragma unroll
    for (int k = 0; k < VEC; ++k) g[k] = o[k] <= 0.f ? 0.f : g[k];  // torch's rule: a NaN out passes g
  }
  if (f.need_y) {
    float d[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) d[k] = __fmul_rn(g[k], sc[k]);
    store_f<T, VEC>(dy + off, d);
  }
  if (f.sum_g) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[kQg * VEC + k] += g[k];
  }
  if (f.sum_gy) {
    float v[VEC];
    load_f<T, VEC>(y + off, v);
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[kQgy * VEC + k] = __fadd_rn(acc[kQgy * VEC + k], __fmul_rn(g[k], v[k]));
  }
  if (f.need_res) {
    float d[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) d[k] = f.res_affine ? __fmul_rn(g[k], rs[k]) : g[k];
    store_f<T, VEC>(dres + off, d);
  }
  if (f.sum_gr) {
    float v[VEC];
    load_f<T, VEC>(res + off, v);
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[kQgr * VEC + k] = __fadd_rn(acc[kQgr * VEC + k], __fmul_rn(g[k], v[k]));
  }
}

// NHWC: rows of C channels; block (tx, ty) with tx over channel vectors, ty over
// rows; grid (gx, nchunks).
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    bn_act_backward_nhwc_kernel(const T* __restrict__ dout, const T* __restrict__ out, const T* __restrict__ y,
                                const T* __restrict__ res, const float* __restrict__ scale,
                                const float* __restrict__ rscale, T* __restrict__ dy, T* __restrict__ dres,
                                float* __restrict__ partial, int64_t M, int64_t C, int64_t rows_per_chunk,
                                int64_t nchunks, BwdFlags f) {
  __shared__ float smem[kThreads * 3 * VEC];
  const int64_t c0 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * VEC;
  const int64_t r0 = (int64_t)blockIdx.y * rows_per_chunk;
  const int64_t r1 = min64(M, r0 + rows_per_chunk);
  const bool active = c0 < C;
  float acc[3 * VEC];
#pragma unroll
  for (int k = 0; k < 3 * VEC; ++k) acc[k] = 0.f;
  if (active) {
    float sc[VEC], rs[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      sc[k] = f.need_y ? scale[c0 + k] : 0.f;
      rs[k] = f.need_res && f.res_affine ? rscale[c0 + k] : 0.f;
    }
    for (int64_t r = r0 + threadIdx.y; r < r1; r += blockDim.y) {
      bwd_vector<T, VEC>(dout, out, y, res, dy, dres, r * C + c0, sc, rs, f, acc);
    }
  }
  if (partial == nullptr) return;  // uniform over the grid: no reductions asked for
  block_sum_y<float, 3 * VEC>(acc, smem);
  if (threadIdx.y == 0 && active) {
#pragma unroll
    for (int q = 0; q < 3; ++q) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) partial[(q * nchunks + blockIdx.y) * C + c0 + k] = acc[q * VEC + k];
    }
  }
}

// NCHW: block (1, 256) owns channel blockIdx.x and a range of units of VEC
// pixels of the flattened (n, hw) index (HW % VEC == 0).
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    bn_act_backward_nchw_kernel(const T* __restrict__ dout, const T* __restrict__ out, const T* __restrict__ y,
                                const T* __restrict__ res, const float* __restrict__ scale,
                                const float* __restrict__ rscale, T* __restrict__ dy, T* __restrict__ dres,
                                float* __restrict__ partial, int64_t C, int64_t HW, int64_t units,
                                int64_t units_per_chunk, int64_t nchunks, BwdFlags f) {
  __shared__ float smem[kThreads * 3];
  const int64_t c = blockIdx.x;
  const int64_t hwv = HW / VEC;
  const int64_t u0 = (int64_t)blockIdx.y * units_per_chunk;
  const int64_t u1 = min64(units, u0 + units_per_chunk);
  float sc[VEC], rs[VEC];
  const float s = f.need_y ? scale[c] : 0.f;
  const float rsc = f.need_res && f.res_affine ? rscale[c] : 0.f;
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    sc[k] = s;
    rs[k] = rsc;
  }
  float accv[3 * VEC];
#pragma unroll
  for (int k = 0; k < 3 * VEC; ++k) accv[k] = 0.f;
  for (int64_t u = u0 + threadIdx.y; u < u1; u += blockDim.y) {
    const int64_t img = u / hwv;
    const int64_t p = u - img * hwv;
    bwd_vector<T, VEC>(dout, out, y, res, dy, dres, (img * C + c) * HW + p * VEC, sc, rs, f, accv);
  }
  if (partial == nullptr) return;
  float acc[3];
#pragma unroll
  for (int q = 0; q < 3; ++q) {
    float t = 0.f;
#pragma unroll
    for (int k = 0; k < VEC; ++k) t += accv[q * VEC + k];
    acc[q] = t;
  }
  block_sum_y<float, 3>(acc, smem);
  if (threadIdx.y == 0) {
#pragma unroll
    for (int q = 0; q < 3; ++q) partial[(q * nchunks + blockIdx.y) * C + c] = acc[q];
  }
}

// Ordered merge of the partials: block (32, 8), thread ty sums chunks ty, ty+8, ...
// in fp64, then a fixed tree over ty.
constexpr int kFx = 32, kFy = 8;

__global__ void __launch_bounds__(kFx* kFy)
    bn_act_backward_merge_kernel(const float* __restrict__ partial, int64_t C, int64_t nchunks,
                                 float* __restrict__ out_g, float* __restrict__ out_g2, float* __restrict__ out_gy,
                                 float* __restrict__ out_gr) {
  __shared__ double smem[kFx * kFy * 3];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = (int64_t)blockIdx.x * kFx + tx;
  double acc[3] = {0.0, 0.0, 0.0};
  const bool want[3] = {out_g != nullptr || out_g2 != nullptr, out_gy != nullptr, out_gr != nullptr};
  if (c < C) {
    for (int64_t j = ty; j < nchunks; j += kFy) {
#pragma unroll
      for (int q = 0; q < 3; ++q) {
        if (want[q]) acc[q] += (double)partial[(q * nchunks + j) * C + c];
      }
    }
  }
  block_sum_y<double, 3>(acc, smem);
  if (ty == 0 && c < C) {
    if (out_g != nullptr) out_g[c] = (float)acc[kQg];
    if (out_g2 != nullptr) out_g2[c] = (float)acc[kQg];
    if (out_gy != nullptr) out_gy[c] = (float)acc[kQgy];
    if (out_gr != nullptr) out_gr[c] = (float)acc[kQgr];
  }
}

template <typename T>
void launch_typed(const BnActBwdArgs& a, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  const T* dout = static_cast<const T*>(a.dout);
  const T* out = static_cast<const T*>(a.out);
  const T* y = static_cast<const T*>(a.y);
  const T* res = static_cast<const T*>(a.res);
  T* dy = static_cast<T*>(a.dy);
  T* dres = static_cast<T*>(a.dres);
  BwdFlags f;
  f.relu = a.relu;
  f.need_y = a.dy != nullptr;
  f.need_res = a.dres != nullptr;
  f.res_affine = a.res_affine;
  f.sum_g = a.sum_g;
  f.sum_gy = a.sum_gy;
  f.sum_gr = a.sum_gr;
  const Plan& p = a.plan;
  if (a.nhwc) {
    const dim3 grid((unsigned)p.gx, (unsigned)p.nchunks), block(p.tx, p.ty);
    const int64_t M = a.N * a.HW;
    if (a.vec) {
      bn_act_backward_nhwc_kernel<T, V><<<grid, block, 0, stream>>>(dout, out, y, res, a.scale, a.rscale, dy, dres,
                                                                    a.partial, M, a.C, p.upc, p.nchunks, f);
    } else {
      bn_act_backward_nhwc_kernel<T, 1><<<grid, block, 0, stream>>>(dout, out, y, res, a.scale, a.rscale, dy, dres,
                                                                    a.partial, M, a.C, p.upc, p.nchunks, f);
    }
  } else {
    const dim3 grid((unsigned)a.C, (unsigned)p.nchunks), block(1, kThreads);
    if (a.vec) {
      bn_act_backward_nchw_kernel<T, V><<<grid, block, 0, stream>>>(dout, out, y, res, a.scale, a.rscale, dy, dres,
                                                                    a.partial, a.C, a.HW, p.units, p.upc, p.nchunks, f);
    } else {
      bn_act_backward_nchw_kernel<T, 1><<<grid, block, 0, stream>>>(dout, out, y, res, a.scale, a.rscale, dy, dres,
                                                                    a.partial, a.C, a.HW, p.units, p.upc, p.nchunks, f);
    }
  }
  if (a.partial == nullptr || cudaPeekAtLastError() != cudaSuccess) return;
  bn_act_backward_merge_kernel<<<(unsigned)ceil_div64(a.C, kFx), dim3(kFx, kFy), 0, stream>>>(
      a.partial, a.C, p.nchunks, a.dshift, a.drshift, a.dscale, a.drscale);
}

}  // namespace

cudaError_t launch_bn_act_backward(const BnActBwdArgs& a, cudaStream_t stream) {
  return dispatch_act(a.dtype, [&](auto tag) { launch_typed<decltype(tag)>(a, stream); });
}

}  // namespace fused_resnet
