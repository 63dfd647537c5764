// The bfloat16 BatchNorm-apply + ReLU transforms of the CUTLASS conv mainloop
// fusion (cutlass/conv/warp/scale_bias_relu_transform.h ships float16 only).
//
// The fusion mainloops instantiate FpropScaleBiasReluTransform and
// WgradScaleBiasReluTransform on their warp fragments; these partial
// specialisations take over when the fragment's element is bfloat16_t, so the
// stock mainloops serve both 16-bit types. The fragment layouts of the bf16 and
// f16 m16n8k16 MMAs are the same, so the pairing of activations with their
// (scale, shift) pairs is the stock one; only the arithmetic differs.
//
// Out-of-range and padding taps: the mainloop fills them with the 16-bit pattern
// OOB_NAN_F16 (0x7eff) instead of zeros, and the transform turns that pattern
// into 0 *after* the transform, so padding is 0 of relu(x*scale+shift). In
// bfloat16 the pattern is the finite value 1.69e38 (in float16 it is a NaN); an
// activation holding exactly that value would read as padding.
#pragma once

#include <cstdint>
#include <type_traits>

#include "cutlass/arch/memory_sm80.h"
#include "cutlass/array.h"
#include "cutlass/conv/warp/scale_bias_relu_transform.h"
#include "cutlass/numeric_types.h"

namespace fused_resnet::cutlass_conv {

// relu(a * s + b) on two bf16 values packed in 32 bits, rounded once (fma.rn).
__device__ __forceinline__ uint32_t bf16x2_fma_relu(uint32_t s, uint32_t a, uint32_t b) {
  uint32_t r;
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
  asm("fma.rn.relu.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(s), "r"(a), "r"(b));
#else
  asm volatile("trap;");
  r = 0;
#endif
  return r;
}

}  // namespace fused_resnet::cutlass_conv

namespace cutlass::conv::warp {

// fprop: both values of a pair are in range or both are out (C % 8 == 0 is required).
template <int N, bool RegisterSized, typename FragmentScaleBias>
struct FpropScaleBiasReluTransform<Array<bfloat16_t, N, RegisterSized>, FragmentScaleBias> {
  using FragmentActivations = Array<bfloat16_t, N, RegisterSized>;
  static constexpr bool kFusedResnetBf16 = true;
  static int const kPairs = N / 2;
  static int const kMmaCols = 2;  // the m16n8k16 A fragment spans two column pairs

  CUTLASS_DEVICE
  void operator()(FragmentActivations& activations, FragmentScaleBias const& scale_bias) {
    uint32_t* act = reinterpret_cast<uint32_t*>(&activations);
    // Each (scale pair, shift pair) is two consecutive 32-bit words.
    uint32_t const* sb = reinterpret_cast<uint32_t const*>(&scale_bias);
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < kPairs; ++i) {
      int const j = ((i / 2) % kMmaCols) * 2;
      uint32_t const r = fused_resnet::cutlass_conv::bf16x2_fma_relu(sb[j], act[i], sb[j + 1]);
      act[i] = act[i] == cutlass::arch::OOB_NAN_F16x2 ? 0u : r;
    }
  }
};

// wgrad: C*R*S may be odd, so the two values of a pair are checked one by one.
template <int N, bool RegisterSized, typename FragmentScaleBias>
struct WgradScaleBiasReluTransform<Array<bfloat16_t, N, RegisterSized>, FragmentScaleBias> {
  using FragmentActivations = Array<bfloat16_t, N, RegisterSized>;
  static constexpr bool kFusedResnetBf16 = true;
  static int const kPairs = N / 2;
  static int const kMmaRows = 2;  // the m16n8k16 B fragment spans two row pairs

  CUTLASS_DEVICE
  void operator()(FragmentActivations& activations, FragmentScaleBias const& scale_bias) {
    uint32_t* act = reinterpret_cast<uint32_t*>(&activations);
    uint32_t const* sb = reinterpret_cast<uint32_t const*>(&scale_bias);
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < kPairs; ++i) {
      int const j = (i / kMmaRows) * 2;
      uint32_t const a = act[i];
      uint32_t r = fused_resnet::cutlass_conv::bf16x2_fma_relu(sb[j], a, sb[j + 1]);
      if ((a & 0xffffu) == cutlass::arch::OOB_NAN_F16) r &= 0xffff0000u;
      if ((a >> 16) == cutlass::arch::OOB_NAN_F16) r &= 0x0000ffffu;
      act[i] = r;
    }
  }
};

}  // namespace cutlass::conv::warp

namespace fused_resnet::cutlass_conv {

// Whether the mainloop's transform is one of the bf16 specialisations above: a
// bf16 kernel that silently took the stock float16 one would compute garbage.
template <typename Transform, typename = void>
struct IsOwnBf16Transform : std::false_type {};
template <typename Transform>
struct IsOwnBf16Transform<Transform, std::void_t<decltype(Transform::kFusedResnetBf16)>> : std::true_type {};

}  // namespace fused_resnet::cutlass_conv
