// The interface between the host launchers (csrc/ops/) and the CUTLASS implicit-GEMM
// convolutions of csrc/cutlass/. Plain pointers and cudaStream_t only, like
// launch.h: the CUTLASS translation units include no torch header.
//
// Five kernel families, NHWC activations, [K, R, S, C] filters, fp32 accumulation (fprop_*
// serve conv, host launcher ops/conv.cpp; wgrad_prologue conv_wgrad and dgrad_bn_relu
// conv_dgrad, ops/conv_backward.cpp):
//   fprop_prologue: y = [relu](conv(relu(x * scale + shift), w) [+ bias]) [+ residual]. BatchNorm-apply
//                   + ReLU of the input runs in the mainloop, per input channel, as
//                   the activation is loaded (fp32 scale/shift and arithmetic, rounded
//                   once: cutlass/scale_bias_fp32.cuh); padding and out-of-range taps
//                   give 0 of the *transformed* activation. The normalised tensor is
//                   never written to memory.
//   fprop_bias_relu: y = relu(conv(x, w) + bias (+ residual)), bias fp32 per output
//                   channel (the folded BatchNorm of an eval-mode block), all in the
//                   epilogue.
//   fprop_stats:    y = [relu](conv(x, w) [+ bias]) [+ residual].
//                   (fprop_prologue and fprop_stats add the bias and take the ReLU in
//                   registers before the residual is added; no ReLU with a residual.)
//   dgrad_bn_relu:  the data gradient of conv(relu(x * scale + shift), w), unit stride:
//                   da = dy (*) w^T in the mainloop, then in the epilogue
//                   dx = da * scale where x * scale + shift > 0 (else 0), stored in x's
//                   dtype, and the slab sums of da*x and da over the same mask (the
//                   gradients of scale and shift) into partial ([2, slabs, C]); scale and
//                   shift fp32.
//   wgrad_prologue: dw[k,r,s,c] = sum_{n,p,q} dy[n,p,q,k] * relu(x*scale+shift)[n, ..., c],
//                   the activation transformed in the mainloop as for fprop; fp32, one
//                   partial dw per split-K slice of the rows (launch_wgrad_reduce sums them).
// y is stored in x's dtype. fprop_prologue (without a residual) and fprop_stats
// also take y's per-channel batch statistics in the epilogue when given a
// partials buffer: every warp writes the (mean, M2) of its slab of
// stats_slab_rows rows of M = N*P*Q into [2, slabs, K], slabs = ceil(M / stats_slab_rows);
// launch_stats_merge (launch.h) merges them. dgrad_bn_relu's slabs are of rows of
// N*H*W, summed by launch_slab_sums.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

namespace fused_resnet {

struct CutlassConvArgs {
  int N, H, W, C, K, R, S, P, Q;
  int pad_h, pad_w, stride_h, stride_w, dil_h, dil_w;
  const void* x;         // [N, H, W, C] (dgrad: read for the prologue's ReLU mask)
  const float* scale;    // prologue: [C]
  const float* shift;    // prologue: [C]
  const float* bias;     // fprop: [K], or nullptr
  bool relu;             // fprop_prologue, fprop_stats: ReLU after the bias
  const void* w;         // fprop: the filter [K, R, S, C]
  const void* residual;  // fprop: [N, P, Q, K] added in the epilogue, or nullptr
  const void* dy;        // wgrad, dgrad: the output gradient [N, P, Q, K]
  void* out;             // fprop: y [N, P, Q, K]; wgrad: the partials [split_k, K, R, S, C] (fp32);
                         // dgrad: dx [N, H, W, C]
  int split_k;           // wgrad: parallel split-K slices over N*P*Q (1 for fprop and dgrad)
  float* partial;        // fprop: the statistics' [2, slabs, K] partials, or nullptr (none taken);
                         // dgrad: the [2, slabs, C] sums (required)
  void* workspace;       // workspace_bytes() bytes, or nullptr when that is 0 (run_kernel allocates it
                         // unless the caller set it: wgrad passes its partials)
};

// One CUTLASS convolution, instantiated for one element type and one tile shape.
// can_run and run return nullptr on success, else CUTLASS's status in words.
struct CutlassConvKernel {
  const char* name;
  int stats_slab_rows;  // rows of M per statistics slab; 0: the kernel reduces nothing
  size_t (*workspace_bytes)(const CutlassConvArgs&);
  const char* (*can_run)(const CutlassConvArgs&);
  const char* (*run)(const CutlassConvArgs&, cudaStream_t);
};

enum class ConvKind : int {
  kFpropPrologue = 0,
  kFpropBiasRelu = 1,
  kWgradPrologue = 2,
  kFpropStats = 3,
  kDgradBnRelu = 4
};
enum class ConvElement : int { kFloat16 = 0, kBFloat16 = 1 };
// fprop tiles: kWide 128x128 (output channels > 64), kNarrow 128x64; dgrad the same by
// input channels; wgrad has one (128x128).
enum class ConvTile : int { kWide = 0, kNarrow = 1 };

const CutlassConvKernel& cutlass_conv_kernel(ConvKind kind, ConvElement element, ConvTile tile);

// Every kernel compiled in, for built_with().
const CutlassConvKernel* const* cutlass_conv_kernels(int* count);

}  // namespace fused_resnet
