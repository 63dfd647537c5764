// CUTLASS implicit-GEMM convolutions with the BatchNorm-apply + ReLU prologue
// fused into the mainloop (CUTLASS's conv mainloop-fusion kernels, Sm80 tensor
// cores, which Sm90 runs too), instantiated by the small .cu files beside this
// one: one element type and one tile shape each, so the build compiles them in
// parallel.
#pragma once

#include "../prologue_conv.h"
#include "bf16_relu_transform.cuh"
#include "cutlass/cutlass.h"
// The kernel headers define the problem-size helpers the device header uses.
#include "cutlass/conv/kernel/default_conv2d_fprop_fusion.h"
#include "cutlass/conv/kernel/default_conv2d_wgrad_fusion.h"
#include "cutlass/conv/device/implicit_gemm_convolution_fusion.h"
#include "cutlass/epilogue/thread/linear_combination.h"
#include "cutlass/gemm/threadblock/threadblock_swizzle.h"

namespace fused_resnet::prologue {

using Layout = cutlass::layout::TensorNHWC;
using VectorLayout = cutlass::layout::RowMajor;  // scale and shift: a 1 x C matrix
using Mma16816 = cutlass::gemm::GemmShape<16, 8, 16>;
using Swizzle = cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<>;

inline cutlass::conv::Conv2dProblemSize problem_size(const PrologueConvArgs& a) {
  return {a.N, a.H, a.W, a.C, a.K, a.R, a.S, a.P, a.Q, a.pad_h, a.pad_w, a.stride_h, a.stride_w,
          a.dil_h, a.dil_w, cutlass::conv::Mode::kCrossCorrelation, a.split_k};
}

template <typename T>
cutlass::TensorRef<T, Layout> nhwc(const void* p, int n, int h, int w, int c) {
  return {static_cast<T*>(const_cast<void*>(p)), Layout::packed({n, h, w, c})};
}

template <typename T>
cutlass::TensorRef<T, VectorLayout> vec(const void* p, int c) {
  return {static_cast<T*>(const_cast<void*>(p)), VectorLayout::packed({1, c})};
}

inline const char* status_text(cutlass::Status s) {
  return s == cutlass::Status::kSuccess ? nullptr : cutlass::cutlassGetStatusString(s);
}

// fprop: y = conv(relu(x*scale+shift), w) (+ residual), stored in T.
template <typename T, typename TileShape, typename WarpShape, int Stages>
struct Fprop {
  static constexpr int kVec = 128 / cutlass::sizeof_bits<T>::value;
  using Epilogue = cutlass::epilogue::thread::LinearCombination<T, kVec, float, float>;
  using Kernel = typename cutlass::conv::kernel::DefaultConv2dFpropFusion<
      T, Layout, T, Layout, T, VectorLayout, T, Layout, float, cutlass::arch::OpClassTensorOp,
      cutlass::arch::Sm80, TileShape, WarpShape, Mma16816, Epilogue, Swizzle, Stages,
      cutlass::arch::OpMultiplyAdd, cutlass::conv::IteratorAlgorithm::kOptimized>::Kernel;
  using Op = cutlass::conv::device::ImplicitGemmConvolutionFusion<Kernel>;
  using Mma = typename Kernel::Mma;
  static_assert(!std::is_same_v<T, cutlass::bfloat16_t> ||
                    IsOwnBf16Transform<cutlass::conv::warp::FpropScaleBiasReluTransform<
                        typename Mma::Operator::TransformedFragmentA,
                        typename Mma::WarpIteratorScaleBias::Fragment>>::value,
                "the bf16 fprop mainloop must use the bf16 transform");

  static typename Op::Arguments arguments(const PrologueConvArgs& a) {
    auto y = nhwc<T>(a.out, a.N, a.P, a.Q, a.K);
    // beta = 0 leaves C unread; with a residual, C is it and beta = 1.
    auto c = a.residual ? nhwc<T>(a.residual, a.N, a.P, a.Q, a.K) : y;
    return {problem_size(a),
            nhwc<T>(a.x, a.N, a.H, a.W, a.C),
            nhwc<T>(a.w, a.K, a.R, a.S, a.C),
            vec<T>(a.scale, a.C),
            vec<T>(a.shift, a.C),
            c,
            y,
            {1.0f, a.residual ? 1.0f : 0.0f}};
  }
  static size_t workspace_bytes(const PrologueConvArgs& a) { return Op::get_workspace_size(arguments(a)); }
  static const char* can_run(const PrologueConvArgs& a) { return status_text(Op::can_implement(arguments(a))); }
  static const char* run(const PrologueConvArgs& a, cudaStream_t stream) {
    Op op;
    auto args = arguments(a);
    if (auto s = op.initialize(args, a.workspace, stream); s != cutlass::Status::kSuccess) return status_text(s);
    return status_text(op.run(stream));
  }
};

// wgrad: dw = dy^T (x) relu(x*scale+shift), accumulated and stored in fp32 (serial
// split-K passes partial sums through dw, which must not round them to 16 bits).
template <typename T, typename TileShape, typename WarpShape, int Stages>
struct Wgrad {
  using Epilogue = cutlass::epilogue::thread::LinearCombination<float, 4, float, float>;
  using Kernel = typename cutlass::conv::kernel::DefaultConv2dWgradFusion<
      T, Layout, T, Layout, T, VectorLayout, float, Layout, float, cutlass::arch::OpClassTensorOp,
      cutlass::arch::Sm80, TileShape, WarpShape, Mma16816, Epilogue, Swizzle, Stages,
      cutlass::arch::OpMultiplyAdd, cutlass::conv::IteratorAlgorithm::kOptimized>::Kernel;
  using Op = cutlass::conv::device::ImplicitGemmConvolutionFusion<Kernel>;
  using Mma = typename Kernel::Mma;
  static_assert(!std::is_same_v<T, cutlass::bfloat16_t> ||
                    IsOwnBf16Transform<cutlass::conv::warp::WgradScaleBiasReluTransform<
                        typename Mma::Operator::TransformedFragmentB,
                        typename Mma::IteratorScaleBias::Fragment>>::value,
                "the bf16 wgrad mainloop must use the bf16 transform");

  static typename Op::Arguments arguments(const PrologueConvArgs& a) {
    auto dw = nhwc<float>(a.out, a.K, a.R, a.S, a.C);
    return {problem_size(a),
            nhwc<T>(a.dy, a.N, a.P, a.Q, a.K),
            nhwc<T>(a.x, a.N, a.H, a.W, a.C),
            vec<T>(a.scale, a.C),
            vec<T>(a.shift, a.C),
            dw,
            dw,
            {1.0f, 0.0f}};
  }
  static size_t workspace_bytes(const PrologueConvArgs& a) { return Op::get_workspace_size(arguments(a)); }
  static const char* can_run(const PrologueConvArgs& a) { return status_text(Op::can_implement(arguments(a))); }
  static const char* run(const PrologueConvArgs& a, cudaStream_t stream) {
    Op op;
    auto args = arguments(a);
    if (auto s = op.initialize(args, a.workspace, stream); s != cutlass::Status::kSuccess) return status_text(s);
    return status_text(op.run(stream));
  }
};

template <typename Conv>
constexpr PrologueConvKernel make_kernel(const char* name) {
  return {name, &Conv::workspace_bytes, &Conv::can_run, &Conv::run};
}

}  // namespace fused_resnet::prologue
