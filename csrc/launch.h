// The interface between the host launchers (csrc/ops/: checks, layouts,
// allocation through PyTorch) and the kernels (*.cu). Plain pointers and
// cudaStream_t only: the .cu files include no torch header, which keeps their
// compile time (nvcc front end, once per architecture) small.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

namespace fused_resnet {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

constexpr int kThreads = 256;  // threads per block of the streaming kernels

inline int elem_size(DType t) { return t == DType::kFloat64 ? 8 : t == DType::kFloat32 ? 4 : 2; }
inline int vec_width(DType t) { return 16 / elem_size(t); }  // elements per 16-byte vector

// Reductions over rows run in chunks: every block reduces `upc` units (rows, or
// vectors of pixels of one channel plane) of one chunk and writes one partial
// per channel into a [quantities, nchunks, C] buffer; a second kernel merges the
// chunks of each channel in a fixed order (deterministic, no atomics).
struct Plan {
  int tx = 1, ty = kThreads;  // block shape: tx over channel vectors, ty over rows
  int64_t gx = 1;             // blocks over channels (NHWC) or channels (NCHW: one per block)
  int64_t upc = 1;            // units per chunk
  int64_t units = 0;          // units in all
  int64_t unit_elems = 1;     // elements of one channel per unit (NCHW vectors: VEC)
  int64_t nchunks = 1;
};

// An elementwise pass over an activation of numel = N*C*HW values, NHWC or NCHW: nvec
// units (16-byte vectors when `vec`, else single values) in a grid-stride loop over
// `blocks` blocks of kThreads threads (ops/common.h elementwise_shape).
struct ElementwiseShape {
  int64_t numel, C, HW;
  bool nhwc, vec;
  int64_t nvec, blocks;
};

struct StatsArgs {
  DType dtype;
  const void* x;
  int64_t N, C, HW;
  bool nhwc, vec;
  Plan plan;
  float* partial;  // [2, nchunks, C]: chunk means, chunk M2s (of x - shift)
  float* shift;    // [C]: each channel's first value, subtracted before reducing
  float* mean;
  float* var;
};
cudaError_t launch_batch_stats(const StatsArgs& a, cudaStream_t stream);

// The merge of per-slab statistics written by a convolution's epilogue
// (cutlass_conv.h): partial is [2, slabs, C] (slab means, slab M2s), slab j holding
// rows [j*slab_rows, (j+1)*slab_rows) of `rows`. More than kMergeChunksPerGroup slabs
// are merged in two levels, through groups ([2, ceil(slabs / kMergeChunksPerGroup), C]).
// Fixed order: deterministic.
constexpr int64_t kMergeChunksPerGroup = 64;
struct SlabStatsArgs {
  const float* partial;
  int64_t C, slabs, slab_rows, rows;
  float* groups;  // scratch, used when slabs > kMergeChunksPerGroup
  float *mean, *var;
};
cudaError_t launch_stats_merge(const SlabStatsArgs& a, cudaStream_t stream);

// Fixed-order fp64 sums over the slabs of two per-slab quantities written by a
// convolution's epilogue (partial: [2, slabs, C]), into sum0 and sum1 ([C] each);
// more than kMergeChunksPerGroup slabs go through groups ([2, ceil(slabs /
// kMergeChunksPerGroup), C] scratch) first.
struct SlabSumArgs {
  const float* partial;
  int64_t C, slabs;
  float* groups;
  float *sum0, *sum1;
};
cudaError_t launch_slab_sums(const SlabSumArgs& a, cudaStream_t stream);

// dw[k, c, r, s] = sum over slices of partial[slice, k, r, s, c], in a fixed order: the
// weight gradient from the parallel split-K slices of the wgrad convolution
// (cutlass_conv.h), in the weight's dtype and [K, C, R, S] layout.
struct WgradReduceArgs {
  DType dtype;  // of dw
  const float* partial;  // [slices, K, R, S, C]
  int64_t slices, K, RS, C;
  void* dw;
};
cudaError_t launch_wgrad_reduce(const WgradReduceArgs& a, cudaStream_t stream);

// out = [dy +] dmean/M + 2 dvar (y - mean)/M: the gradient at y through its batch
// statistics (mean, var over M = numel / C values per channel), plus dy when given.
struct ConvOutputGradArgs {
  DType dtype;
  const void* dy;  // may be null
  const void* y;
  const float *dmean, *dvar, *mean;
  float inv_m;  // 1 / M
  void* out;
  ElementwiseShape shape;
};
cudaError_t launch_conv_output_grad(const ConvOutputGradArgs& a, cudaStream_t stream);

struct FinalizeArgs {
  const float *mean, *var, *weight, *bias;  // weight, bias may be null
  float eps;
  int64_t C;
  float *scale, *shift, *invstd;
};
cudaError_t launch_bn_finalize(const FinalizeArgs& a, cudaStream_t stream);

struct FinalizeBackwardArgs {
  const float *dscale, *dshift, *dinvstd, *mean, *weight, *scale, *invstd;  // dinvstd, weight may be null
  int64_t C;
  float *dmean, *dvar, *dweight;  // dweight: null without weight
};
cudaError_t launch_bn_finalize_backward(const FinalizeBackwardArgs& a, cudaStream_t stream);

struct RunningArgs {
  const float *mean, *var;
  int64_t C;
  float bessel;  // count / (count - 1)
  DType dtype;   // of running_mean / running_var
  void* rmean;
  int64_t rm_stride;
  void* rvar;
  int64_t rv_stride;
  int64_t* nbt;  // may be null
  bool has_momentum;
  double momentum;
};
cudaError_t launch_bn_update_running(const RunningArgs& a, cudaStream_t stream);

enum ResMode : int { kNoRes = 0, kRes = 1, kResAffine = 2 };

struct BnActArgs {
  DType dtype;
  const void* y;
  const float *scale, *shift;
  const void* res;                 // null unless res_mode != kNoRes
  const float *rscale, *rshift;    // null unless res_mode == kResAffine
  void* out;
  ElementwiseShape shape;
  int res_mode;
  bool relu;
};
cudaError_t launch_bn_act(const BnActArgs& a, cudaStream_t stream);

struct BnActBwdArgs {
  DType dtype;
  const void *dout, *out, *y, *res;  // out if relu, y if dscale, res if dres_scale; others may be null
  const float *scale, *rscale;       // rscale may be null
  void *dy, *dres;                   // null when not asked for
  int64_t N, C, HW;
  bool nhwc, vec;
  bool relu, res_affine, sum_g, sum_gy, sum_gr;
  Plan plan;
  float* partial;  // [3, nchunks, C] (sum g, sum g*y, sum g*res) or null when no sums
  float *dshift, *drshift, *dscale, *drscale;  // null when not asked for
};
cudaError_t launch_bn_act_backward(const BnActBwdArgs& a, cudaStream_t stream);

// Build information: SM architectures compiled in (__CUDA_ARCH_LIST__, e.g. 800,
// 900) and the CUDA toolkit version (major*1000 + minor*10).
std::vector<int> compiled_archs();
int cuda_toolkit_version();

}  // namespace fused_resnet
