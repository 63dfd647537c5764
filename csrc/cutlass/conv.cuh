// The CUTLASS implicit-GEMM convolutions of csrc/cutlass_conv.h as templates
// (Sm80 tensor-core kernels, which Sm90 runs too): the mainloop-fusion kernels
// for the BatchNorm-apply + ReLU prologue (fprop, wgrad; fp32 scale/shift,
// scale_bias_fp32.cuh), the fprop with a broadcast epilogue for bias + residual +
// ReLU, and the plain fprop; both fprops without a bias take the output's batch
// statistics in the epilogue; the unit-stride dgrad applies the gradient of a
// BatchNorm-apply + ReLU prologue in its epilogue (fused_epilogues.cuh). The small
// .cu files beside this one instantiate them, one element type and one tile shape
// each, so the build compiles them in parallel.
#pragma once

#include <type_traits>

#include "../cutlass_conv.h"
#include "fused_epilogues.cuh"
#include "scale_bias_fp32.cuh"
#include "cutlass/cutlass.h"
// The kernel headers define the problem-size helpers the device header uses.
#include "cutlass/conv/kernel/default_conv2d_dgrad.h"
#include "cutlass/conv/kernel/default_conv2d_fprop.h"
#include "cutlass/conv/kernel/default_conv2d_fprop_fusion.h"
#include "cutlass/conv/kernel/default_conv2d_wgrad_fusion.h"
#include "cutlass/conv/kernel/default_conv2d_fprop_with_broadcast.h"
#include "cutlass/conv/device/implicit_gemm_convolution.h"
#include "cutlass/conv/device/implicit_gemm_convolution_fusion.h"
#include "cutlass/epilogue/thread/activation.h"
#include "cutlass/epilogue/thread/linear_combination_bias_elementwise.h"
#include "cutlass/epilogue/thread/linear_combination.h"
#include "cutlass/gemm/threadblock/threadblock_swizzle.h"

namespace fused_resnet::cutlass_conv {

using Layout = cutlass::layout::TensorNHWC;
using VectorLayout = cutlass::layout::RowMajor;  // scale and shift: a 1 x C matrix
using Mma16816 = cutlass::gemm::GemmShape<16, 8, 16>;
using Swizzle = cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<>;

inline cutlass::conv::Conv2dProblemSize problem_size(const CutlassConvArgs& a) {
  return {a.N, a.H, a.W, a.C, a.K, a.R, a.S, a.P, a.Q, a.pad_h, a.pad_w, a.stride_h, a.stride_w,
          a.dil_h, a.dil_w, cutlass::conv::Mode::kCrossCorrelation, a.split_k};
}

template <typename T>
cutlass::TensorRef<T, Layout> nhwc(const void* p, int n, int h, int w, int c) {
  return {static_cast<T*>(const_cast<void*>(p)), Layout::packed({n, h, w, c})};
}

// The mainloop's scale/shift vectors: [C] fp32 (scale_bias_fp32.cuh).
template <typename T>
cutlass::TensorRef<T, VectorLayout> vec(const void* p, int c) {
  return {static_cast<T*>(const_cast<void*>(p)), VectorLayout::packed({1, c})};
}

// What an fprop epilogue applies and where its statistics go, for a kernel whose
// warps own slabs of SlabRows rows (no statistics when a.partial is null).
template <int SlabRows>
FpropEpilogueArgs fprop_epilogue_args(const CutlassConvArgs& a) {
  const int rows = a.N * a.P * a.Q;
  return {a.bias, a.relu, a.partial, rows, a.K, (rows + SlabRows - 1) / SlabRows};
}

// A stock kernel (DefaultConv2d*::Kernel) rebuilt with one of the epilogues of
// fused_epilogues.cuh around its own.
template <typename StockKernel, template <class, class, class> class Fused, cutlass::conv::Operator kOperator>
using WithEpilogue = cutlass::conv::kernel::ImplicitGemmConvolution<
    typename StockKernel::Mma, Fused<typename StockKernel::Epilogue, Mma16816, Swizzle>, Swizzle, kOperator>;

// The fprop output y [N, P, Q, K] and the epilogue's source C: the residual (read
// with beta = 1) or y itself (beta = 0 leaves it unread).
template <typename T>
struct FpropOutput {
  cutlass::TensorRef<T, Layout> y, c;
  float beta;
};

template <typename T>
FpropOutput<T> fprop_output(const CutlassConvArgs& a) {
  auto y = nhwc<T>(a.out, a.N, a.P, a.Q, a.K);
  return {y, a.residual ? nhwc<T>(a.residual, a.N, a.P, a.Q, a.K) : y, a.residual ? 1.0f : 0.0f};
}

inline const char* status_text(cutlass::Status s) {
  return s == cutlass::Status::kSuccess ? nullptr : cutlass::cutlassGetStatusString(s);
}

// fprop: y = [relu](conv(relu(x*scale+shift), w) [+ bias]) [+ residual], stored in T
// (FpropEpilogue: bias and ReLU in registers, the residual added by the stock store
// after them); the batch statistics of y in the epilogue when a.partial is given
// (never with a residual).
template <typename T, typename TileShape, typename WarpShape, int Stages>
struct FpropPrologue {
  static constexpr int kVec = 128 / cutlass::sizeof_bits<T>::value;
  static constexpr int kStatsSlabRows = WarpShape::kM;
  using Output = LinearCombinationWith<T, kVec, FpropEpilogueArgs>;
  // The stock composition with fp32 scale/shift vectors, its warp-level scale/shift
  // iterator replaced by the fp32 one.
  using Stock = cutlass::conv::kernel::DefaultConv2dFpropFusion<
      T, Layout, T, Layout, float, VectorLayout, T, Layout, float, cutlass::arch::OpClassTensorOp,
      cutlass::arch::Sm80, TileShape, WarpShape, Mma16816, Output, Swizzle, Stages,
      cutlass::arch::OpMultiplyAdd, cutlass::conv::IteratorAlgorithm::kOptimized>;
  using Mma = cutlass::conv::threadblock::ImplicitGemmFpropFusionMultistage<
      TileShape, typename Stock::IteratorA, typename Stock::SmemIteratorA, cutlass::arch::CacheOperation::Always,
      typename Stock::IteratorB, typename Stock::SmemIteratorB, cutlass::arch::CacheOperation::Global,
      typename Stock::IteratorScaleBias, typename Stock::SmemIteratorScaleBias,
      cutlass::arch::CacheOperation::Always, typename Stock::MmaPolicy,
      Fp32ScaleBiasTileIterator<cutlass::MatrixShape<WarpShape::kM, WarpShape::kK>, TileShape::kK,
                                Stock::MmaCore::WarpCount::kK>,
      Stages>;
  using Kernel = cutlass::conv::kernel::ImplicitGemmConvolutionFusion<
      Mma, FpropEpilogue<typename Stock::Epilogue, Mma16816, Swizzle>, Swizzle, cutlass::conv::Operator::kFprop>;
  using Op = cutlass::conv::device::ImplicitGemmConvolutionFusion<Kernel>;
  using Transform = cutlass::conv::warp::FpropScaleBiasReluTransform<typename Mma::Operator::TransformedFragmentA,
                                                                      typename Mma::WarpIteratorScaleBias::Fragment>;
  static_assert(IsFp32Transform<Transform>::value, "the fprop mainloop must use the fp32 scale/shift transform");

  static typename Op::Arguments arguments(const CutlassConvArgs& a) {
    const FpropOutput<T> out = fprop_output<T>(a);
    return {problem_size(a),
            nhwc<T>(a.x, a.N, a.H, a.W, a.C),
            nhwc<T>(a.w, a.K, a.R, a.S, a.C),
            vec<float>(a.scale, a.C),
            vec<float>(a.shift, a.C),
            out.c,
            out.y,
            {1.0f, out.beta, fprop_epilogue_args<kStatsSlabRows>(a)}};
  }
};

// fprop: y = [relu](conv(x, w) [+ bias]) [+ residual], stored in T, as FpropPrologue
// without the prologue; the batch statistics of y in the epilogue when a.partial is given.
template <typename T, typename TileShape, typename WarpShape, int Stages>
struct FpropStats {
  static constexpr int kVec = 128 / cutlass::sizeof_bits<T>::value;
  static constexpr int kStatsSlabRows = WarpShape::kM;
  using Output = LinearCombinationWith<T, kVec, FpropEpilogueArgs>;
  using Stock = typename cutlass::conv::kernel::DefaultConv2dFprop<
      T, Layout, T, Layout, T, Layout, float, cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80, TileShape,
      WarpShape, Mma16816, Output, Swizzle, Stages, cutlass::arch::OpMultiplyAdd,
      cutlass::conv::IteratorAlgorithm::kOptimized>::Kernel;
  using Kernel = WithEpilogue<Stock, FpropEpilogue, cutlass::conv::Operator::kFprop>;
  using Op = cutlass::conv::device::ImplicitGemmConvolution<Kernel>;

  static typename Op::Arguments arguments(const CutlassConvArgs& a) {
    const FpropOutput<T> out = fprop_output<T>(a);
    return {problem_size(a),
            nhwc<T>(a.x, a.N, a.H, a.W, a.C),
            nhwc<T>(a.w, a.K, a.R, a.S, a.C),
            out.c,
            out.y,
            {1.0f, out.beta, fprop_epilogue_args<kStatsSlabRows>(a)}};
  }
};

// wgrad: dw = dy^T (x) relu(x*scale+shift), accumulated and stored in fp32, parallel
// split-K: slice k of the rows writes its own [K, R, S, C] partial at a.out + k * K*R*S*C
// (no slice waits for another; wgrad_reduce sums them in order). a.workspace, which
// CUTLASS zeroes before the launch and, in this mode, never reads, is that buffer.
template <typename T, typename TileShape, typename WarpShape, int Stages>
struct WgradPrologue {
  using Epilogue = cutlass::epilogue::thread::LinearCombination<float, 4, float, float>;
  // The stock composition with fp32 scale/shift vectors, its scale/shift iterator
  // replaced by the fp32 one.
  using Stock = cutlass::conv::kernel::DefaultConv2dWgradFusion<
      T, Layout, T, Layout, float, VectorLayout, float, Layout, float, cutlass::arch::OpClassTensorOp,
      cutlass::arch::Sm80, TileShape, WarpShape, Mma16816, Epilogue, Swizzle, Stages,
      cutlass::arch::OpMultiplyAdd, cutlass::conv::IteratorAlgorithm::kOptimized>;
  using Mma = cutlass::conv::threadblock::ImplicitGemmWgradFusionMultistage<
      TileShape, typename Stock::IteratorA, typename Stock::SmemIteratorA, cutlass::arch::CacheOperation::Always,
      typename Stock::IteratorB, typename Stock::SmemIteratorB, cutlass::arch::CacheOperation::Always,
      Fp32ScaleBiasVectorIterator<cutlass::MatrixShape<1, WarpShape::kN>>, typename Stock::MmaPolicy, Stages>;
  using Kernel = cutlass::conv::kernel::ImplicitGemmConvolutionFusion<Mma, typename Stock::Epilogue, Swizzle,
                                                                      cutlass::conv::Operator::kWgrad>;
  using Op = cutlass::conv::device::ImplicitGemmConvolutionFusion<Kernel>;
  using Transform = cutlass::conv::warp::WgradScaleBiasReluTransform<typename Mma::Operator::TransformedFragmentB,
                                                                      typename Mma::IteratorScaleBias::Fragment>;
  static_assert(IsFp32Transform<Transform>::value, "the wgrad mainloop must use the fp32 scale/shift transform");

  static typename Op::Arguments arguments(const CutlassConvArgs& a) {
    auto dw = nhwc<float>(a.out, a.K, a.R, a.S, a.C);
    return {problem_size(a),
            nhwc<T>(a.dy, a.N, a.P, a.Q, a.K),
            nhwc<T>(a.x, a.N, a.H, a.W, a.C),
            vec<float>(a.scale, a.C),
            vec<float>(a.shift, a.C),
            dw,
            dw,
            {1.0f, 0.0f},
            cutlass::conv::SplitKMode::kParallel};
  }
};

// fprop: y = relu(conv(x, w) + bias (+ residual)), bias fp32 per output channel.
template <typename T, typename TileShape, typename WarpShape, int Stages>
struct FpropBiasRelu {
  static constexpr int kVec = 128 / cutlass::sizeof_bits<T>::value;
  // z = relu(acc + beta * C + bias): C is the residual (beta = 1) or unread (beta = 0).
  using Epilogue = cutlass::epilogue::thread::LinearCombinationBiasElementwise<
      T, float, float, T, T, kVec, cutlass::epilogue::thread::ReLu<float>, cutlass::plus<float>,
      /*StoreT=*/false, /*ElementVector=*/float>;
  using Kernel = typename cutlass::conv::kernel::DefaultConv2dFpropWithBroadcast<
      T, Layout, T, Layout, T, Layout, float, cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80, TileShape,
      WarpShape, Mma16816, Epilogue, Swizzle, Stages, cutlass::arch::OpMultiplyAdd,
      cutlass::conv::IteratorAlgorithm::kOptimized>::Kernel;
  using Op = cutlass::conv::device::ImplicitGemmConvolution<Kernel>;

  static typename Op::Arguments arguments(const CutlassConvArgs& a) {
    const FpropOutput<T> out = fprop_output<T>(a);
    return {problem_size(a),
            nhwc<T>(a.x, a.N, a.H, a.W, a.C),
            nhwc<T>(a.w, a.K, a.R, a.S, a.C),
            out.c,
            out.y,
            {1.0f, out.beta},
            cutlass::conv::SplitKMode::kSerial,
            const_cast<float*>(a.bias),  // ldr = 0: every row of output tiles reads the same K values
            nullptr};
  }
};

// dgrad of conv(relu(x*scale+shift), w), unit stride: dx = (dy (*) w^T) * scale where
// x*scale+shift > 0, else 0, stored in T; the slab sums of g_u * x and g_u (the
// gradients of scale and shift) into a.partial. scale/shift are fp32 here.
template <typename T, typename TileShape, typename WarpShape, int Stages>
struct DgradBnRelu {
  static constexpr int kVec = 128 / cutlass::sizeof_bits<T>::value;
  static constexpr int kStatsSlabRows = WarpShape::kM;
  using Output = LinearCombinationWith<T, kVec, DgradPrologue>;
  using Stock = typename cutlass::conv::kernel::DefaultConv2dDgrad<
      T, Layout, T, Layout, T, Layout, float, cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80, TileShape,
      WarpShape, Mma16816, Output, Swizzle, Stages, cutlass::arch::OpMultiplyAdd,
      cutlass::conv::IteratorAlgorithm::kOptimized, cutlass::conv::StrideSupport::kUnity>::Kernel;
  using Kernel = WithEpilogue<Stock, DgradBnReluEpilogue, cutlass::conv::Operator::kDgrad>;
  using Op = cutlass::conv::device::ImplicitGemmConvolution<Kernel>;

  static typename Op::Arguments arguments(const CutlassConvArgs& a) {
    auto dx = nhwc<T>(a.out, a.N, a.H, a.W, a.C);
    const int rows = a.N * a.H * a.W;
    const DgradPrologue prologue{a.x, a.scale, a.shift, a.partial, rows, a.C,
                                 (rows + kStatsSlabRows - 1) / kStatsSlabRows};
    return {problem_size(a),
            nhwc<T>(a.dy, a.N, a.P, a.Q, a.K),
            nhwc<T>(a.w, a.K, a.R, a.S, a.C),
            dx,
            dx,
            {1.0f, 0.0f, prologue}};
  }
};

template <typename Conv>
size_t workspace_bytes(const CutlassConvArgs& a) {
  return Conv::Op::get_workspace_size(Conv::arguments(a));
}

// Conv::kStatsSlabRows where the kernel declares it, else 0. A C++17 detection idiom,
// not a requires-expression: torch 2.11 builds extensions with -std=c++17.
template <typename Conv, typename = void>
struct SlabRows : std::integral_constant<int, 0> {};
template <typename Conv>
struct SlabRows<Conv, std::void_t<decltype(Conv::kStatsSlabRows)>> : std::integral_constant<int, Conv::kStatsSlabRows> {
};

template <typename Conv>
constexpr int stats_slab_rows() {
  return SlabRows<Conv>::value;
}

template <typename Conv>
const char* can_run(const CutlassConvArgs& a) {
  // The slab epilogues reduce the accumulators: with split-K each slice would hold partial sums.
  if (stats_slab_rows<Conv>() != 0 && a.split_k != 1) return "its epilogue reduces whole outputs: split-K must be 1";
  return status_text(Conv::Op::can_implement(Conv::arguments(a)));
}

template <typename Conv>
const char* run(const CutlassConvArgs& a, cudaStream_t stream) {
  typename Conv::Op op;
  auto args = Conv::arguments(a);
  if (auto s = op.initialize(args, a.workspace, stream); s != cutlass::Status::kSuccess) return status_text(s);
  return status_text(op.run(stream));
}

template <typename Conv>
constexpr CutlassConvKernel make_kernel(const char* name) {
  return {name, stats_slab_rows<Conv>(), &workspace_bytes<Conv>, &can_run<Conv>, &run<Conv>};
}

}  // namespace fused_resnet::cutlass_conv
