// BatchNorm-apply + ReLU of the activation in the CUTLASS conv mainloop fusion,
// with fp32 scale and shift and fp32 arithmetic, rounded once to the 16-bit type.
//
// The stock fusion (cutlass/conv/warp/scale_bias_relu_transform.h and its
// iterators) reads scale and shift in the activation's 16-bit type, and that
// rounding is the same for every element of a channel: it does not average out
// (a bf16 scale is off by up to 2^-9 of itself for the whole channel), which is
// outside the parity rule wherever the output feeds batch statistics. Here:
//
//   fprop: the stock threadblock iterators carry fp32 vectors into shared memory
//     unchanged (per stage: [scale: kK | shift: kK]); Fp32ScaleBiasTileIterator
//     reads each lane's channels there into registers, where the stock warp
//     iterator's ldmatrix (which moves 16-bit elements only) would.
//   wgrad: Fp32ScaleBiasVectorIterator loads each lane's channels from global
//     memory, as the stock one does in 16 bits.
//   FpropScaleBiasReluTransform / WgradScaleBiasReluTransform specialised for fp32
//     scale/shift fragments, for float16 and bfloat16 activations.
//
// Which channel each activation of a lane holds (m16n8k16, t = lane % 4, g = lane / 4):
//   fprop, operand A: pairs (a0 a1) and (a2 a3) of each 16-row block are channels
//     2t, 2t+1 of the k-group; (a4 a5), (a6 a7) are 2t+8, 2t+9.
//   wgrad, operand B: the four values of an 8-column tile n are channel column g of
//     that tile; the fragment is [s b] per tile.
//
// Out-of-range and padding taps: the mainloop fills them with the 16-bit pattern
// OOB_NAN_F16 (0x7eff) instead of zeros; the transforms turn that pattern into 0
// after the transform, so padding is 0 of relu(x*scale+shift). In bfloat16 the
// pattern is the finite value 1.69e38 (in float16 a NaN); an activation holding
// exactly that value would read as padding (also in dgrad_bn_relu's ReLU mask).
#pragma once

#include <cstdint>
#include <type_traits>

#include "cutlass/arch/memory.h"
#include "cutlass/arch/memory_sm80.h"
#include "cutlass/array.h"
#include "cutlass/conv/conv2d_problem_size.h"
#include "cutlass/conv/threadblock/conv2d_params.h"
#include "cutlass/conv/warp/scale_bias_relu_transform.h"
#include "cutlass/layout/matrix.h"
#include "cutlass/matrix_coord.h"
#include "cutlass/numeric_conversion.h"
#include "cutlass/numeric_types.h"
#include "cutlass/tensor_ref.h"

namespace fused_resnet::cutlass_conv {

// relu(a * s + b) in fp32, rounded once to T; 0 for the padding pattern. NaN stays NaN.
template <typename T>
CUTLASS_DEVICE T scale_shift_relu(T a, float s, float b) {
  if (a.raw() == cutlass::arch::OOB_NAN_F16) return T(0.f);
  const float u = fmaf(static_cast<float>(a), s, b);
  return cutlass::NumericConverter<T, float>()(u < 0.f ? 0.f : u);
}

// The elements of a 16-bit warp fragment (packed two to a 32-bit word, element k
// in the low half of word k / 2 for even k).
template <typename T, int N, bool RegisterSized>
CUTLASS_DEVICE T* elements(cutlass::Array<T, N, RegisterSized>& fragment) {
  static_assert(cutlass::sizeof_bits<T>::value == 16, "16-bit activations");
  return reinterpret_cast<T*>(&fragment);
}

// fprop: one lane's scale/shift for one k-group, channels 2t, 2t+1, 2t+8, 2t+9.
struct Fp32ScaleBiasFragment {
  float scale[4];
  float shift[4];
};

// fprop: each lane's Fp32ScaleBiasFragment for one k-group (16 channels) of the current
// stage, in the [scale: TileK | shift: TileK] per-stage layout in shared memory.
// Follows the stock ScaleBiasTileIterator's protocol: operator++ steps to the next
// k-group and, after the last, to the next stage; add_tile_offset moves by (row,
// k-groups), whole stages first; set_kgroup_index names the k-group.
template <typename WarpShape, int TileK, int PartitionsK>
class Fp32ScaleBiasTileIterator {
 public:
  using Element = float;
  using Layout = cutlass::layout::RowMajor;
  using TensorRef = cutlass::TensorRef<float, Layout>;
  using TensorCoord = cutlass::MatrixCoord;
  using Fragment = Fp32ScaleBiasFragment;
  static constexpr int kGroupK = 16;  // channels of one m16n8k16 MMA
  static constexpr int kGroupsPerTile = WarpShape::kColumn / kGroupK;
  static_assert(WarpShape::kColumn == TileK, "one warp covers the threadblock's K (no split-K warps)");
  static_assert(PartitionsK == 1, "warps split over K are not supported");

  CUTLASS_HOST_DEVICE Fp32ScaleBiasTileIterator() : stage_(nullptr), group_(0), lane_col_(0) {}

  CUTLASS_DEVICE Fp32ScaleBiasTileIterator(TensorRef const& ref, int lane_id)
      : stage_(ref.data()), group_(0), lane_col_(2 * (lane_id % 4)) {}

  CUTLASS_DEVICE Fp32ScaleBiasTileIterator& add_tile_offset(TensorCoord const& offset) {
    stage_ += (offset.column() / kGroupsPerTile) * 2 * TileK;
    group_ += offset.column() % kGroupsPerTile;
    return *this;
  }

  CUTLASS_DEVICE Fp32ScaleBiasTileIterator& operator++() {
    if (++group_ == kGroupsPerTile) {
      group_ = 0;
      stage_ += 2 * TileK;
    }
    return *this;
  }

  CUTLASS_DEVICE void set_kgroup_index(int k_group) { group_ = k_group % kGroupsPerTile; }

  // Read here, where the stock iterator's ldmatrix reads: the mainloop transforms the
  // fragment of a stage's last k-group after the barrier that hands that stage back
  // to the global->shared copies, so the values cannot wait for the transform.
  CUTLASS_DEVICE void load(Fragment& frag) const {
    const float* scale = stage_ + group_ * kGroupK + lane_col_;  // 8-byte aligned: lane_col_ is even
    const float* shift = scale + TileK;
    const float2 s0 = *reinterpret_cast<const float2*>(scale), s8 = *reinterpret_cast<const float2*>(scale + 8);
    const float2 b0 = *reinterpret_cast<const float2*>(shift), b8 = *reinterpret_cast<const float2*>(shift + 8);
    frag = {{s0.x, s0.y, s8.x, s8.y}, {b0.x, b0.y, b8.x, b8.y}};
  }

 private:
  const float* stage_;
  int group_;
  int lane_col_;
};

// wgrad: each lane's scale/shift for the channel of its column in each of the
// warp's 8-column tiles (WarpShape: 1 x N), from global memory. The GEMM's columns
// run over (r, s, c), so a column's channel is its index modulo C after the
// division by S*C that the activation iterator's parameters provide.
template <typename WarpShape>
class Fp32ScaleBiasVectorIterator {
 public:
  using Element = float;
  using Layout = cutlass::layout::RowMajor;
  using TensorRef = cutlass::TensorRef<float, Layout>;
  using TensorCoord = cutlass::MatrixCoord;
  using ConstPointer = const float*;
  static constexpr int kIterations = WarpShape::kColumn / 8;
  using Fragment = cutlass::Array<float, 2 * kIterations>;

  struct Params {
    cutlass::conv::threadblock::Conv2dWgradActivationIteratorOptimizedParams activation;
    CUTLASS_HOST_DEVICE Params() {}
    CUTLASS_HOST_DEVICE Params(cutlass::conv::Conv2dProblemSize const& problem_size, Layout const&)
        : activation(problem_size, cutlass::layout::TensorNHWC(0, 0, 0)) {}
  };

  CUTLASS_HOST_DEVICE Fp32ScaleBiasVectorIterator(Params const& params, cutlass::conv::Conv2dProblemSize const&,
                                                  ConstPointer scale, ConstPointer shift, int thread_id,
                                                  TensorCoord const& threadblock_offset)
      : params_(params), scale_(scale), shift_(shift),
        column_(threadblock_offset.column() + (thread_id % 32) / 4) {}

  CUTLASS_DEVICE void add_tile_offset(TensorCoord const& offset) {
    column_ += WarpShape::kColumn * offset.column();
    CUTLASS_PRAGMA_UNROLL
    for (int c = 0; c < kIterations; ++c) {
      int rs, sc, rem;
      params_.activation.sc_divmod(rs, rem, column_ + c * 8);
      params_.activation.c_divmod(sc, channel_[c], rem);
    }
  }

  CUTLASS_DEVICE void load(Fragment& frag) const {
    CUTLASS_PRAGMA_UNROLL
    for (int c = 0; c < kIterations; ++c) {
      frag[2 * c] = scale_[channel_[c]];
      frag[2 * c + 1] = shift_[channel_[c]];
    }
  }

 private:
  Params const& params_;
  ConstPointer scale_, shift_;
  int column_;
  int channel_[kIterations];
};

}  // namespace fused_resnet::cutlass_conv

namespace cutlass::conv::warp {

// fprop with fp32 scale/shift: element k of a 16-row block (k = 0..7) is channel
// 2t + (k % 2) + 8 * ((k / 4) % 2) of the k-group.
template <typename T, int N, bool RegisterSized>
struct FpropScaleBiasReluTransform<Array<T, N, RegisterSized>, fused_resnet::cutlass_conv::Fp32ScaleBiasFragment> {
  static constexpr bool kFusedResnetFp32 = true;

  CUTLASS_DEVICE
  void operator()(Array<T, N, RegisterSized>& activations,
                  fused_resnet::cutlass_conv::Fp32ScaleBiasFragment const& sb) {
    T* a = fused_resnet::cutlass_conv::elements(activations);
    CUTLASS_PRAGMA_UNROLL
    for (int k = 0; k < N; ++k) {
      const int c = 2 * ((k / 4) % 2) + k % 2;
      a[k] = fused_resnet::cutlass_conv::scale_shift_relu(a[k], sb.scale[c], sb.shift[c]);
    }
  }
};

// wgrad with fp32 scale/shift: activation pairs 2c and 2c+1 (rows 2t.. and 2t+8..
// of 8-column tile c) share tile c's channel.
template <typename T, int N, bool RegisterSized, int M>
struct WgradScaleBiasReluTransform<Array<T, N, RegisterSized>, Array<float, M, true>> {
  static constexpr bool kFusedResnetFp32 = true;

  CUTLASS_DEVICE
  void operator()(Array<T, N, RegisterSized>& activations, Array<float, M, true> const& sb) {
    T* a = fused_resnet::cutlass_conv::elements(activations);
    CUTLASS_PRAGMA_UNROLL
    for (int k = 0; k < N; ++k) {
      const int tile = k / 4;
      a[k] = fused_resnet::cutlass_conv::scale_shift_relu(a[k], sb[2 * tile], sb[2 * tile + 1]);
    }
  }
};

}  // namespace cutlass::conv::warp

namespace fused_resnet::cutlass_conv {

// Whether a mainloop's transform is one of the fp32 specialisations above (the
// stock one would read the fp32 fragment as float16 pairs).
template <typename Transform, typename = void>
struct IsFp32Transform : std::false_type {};
template <typename Transform>
struct IsFp32Transform<Transform, std::void_t<decltype(Transform::kFusedResnetFp32)>> : std::true_type {};

}  // namespace fused_resnet::cutlass_conv
