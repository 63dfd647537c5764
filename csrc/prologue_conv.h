// The interface between the host wrappers (ops.cpp) and the CUTLASS convolutions
// with the BatchNorm-apply + ReLU prologue fused into the mainloop (csrc/cutlass/).
// Plain pointers and cudaStream_t only, like launch.h: the CUTLASS translation
// units include no torch header.
//
// Both convolutions read the activation x (NHWC) through relu(x * scale + shift),
// per input channel, while loading it into shared memory; zero padding and
// out-of-range taps give 0 of the *transformed* activation, so the normalised
// tensor is never written to memory.
//   fprop: y[n,p,q,k] = sum_{r,s,c} relu(x*scale+shift)[n, p*sh-ph+r*dh, q*sw-pw+s*dw, c] * w[k,r,s,c]
//          (+ residual[n,p,q,k]), fp32 accumulation, stored in x's dtype.
//   wgrad: dw[k,r,s,c] = sum_{n,p,q} dy[n,p,q,k] * relu(x*scale+shift)[n, ..., c], the same indexing.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

namespace fused_resnet {

struct PrologueConvArgs {
  int N, H, W, C, K, R, S, P, Q;
  int pad_h, pad_w, stride_h, stride_w, dil_h, dil_w;
  const void* x;         // [N, H, W, C]
  const void* scale;     // [C], the activation's dtype
  const void* shift;     // [C], the activation's dtype
  const void* w;         // fprop: the filter [K, R, S, C]
  const void* residual;  // fprop: [N, P, Q, K] added in the epilogue, or nullptr
  const void* dy;        // wgrad: the output gradient [N, P, Q, K]
  void* out;             // fprop: y [N, P, Q, K]; wgrad: dw [K, R, S, C]
  int split_k;           // wgrad: serial split-K slices over N*P*Q (1 for fprop)
  void* workspace;       // wgrad: workspace_bytes() zero-initialised-by-the-kernel bytes
};

// A CUTLASS convolution instantiated for one element type and one tile shape.
// `run` returns nullptr on success, else the CUTLASS status in words.
struct PrologueConvKernel {
  const char* name;
  size_t (*workspace_bytes)(const PrologueConvArgs&);
  const char* (*can_run)(const PrologueConvArgs&);
  const char* (*run)(const PrologueConvArgs&, cudaStream_t);
};

// Element type 0: float16, 1: bfloat16. Tile configurations of fprop: 0 = 128x128
// (K > 64), 1 = 128x64 (K <= 64).
const PrologueConvKernel& fprop_prologue_kernel(int element, int tile);
const PrologueConvKernel& wgrad_prologue_kernel(int element);

}  // namespace fused_resnet
