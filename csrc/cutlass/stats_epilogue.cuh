// Per-channel batch statistics of a convolution's output, taken in the epilogue
// from the accumulators while they are still in registers, so the output is
// never read back for its statistics.
//
// The GEMM's rows (M = N*P*Q) fall into slabs of WarpShape::kM rows, one slab per
// warp row of a threadblock tile (slab = tile_m * warps_m + warp_m covers rows
// [slab * kWarpM, slab * kWarpM + kWarpM), so the slabs tile M in order). Every
// warp reduces its slab, for each of its output channels, to a mean and an M2
// (sum of squared deviations from that mean), two passes over its registers, and
// writes them to a [2, slabs, K] partials buffer. No atomics: batch_stats.cu merges
// the slabs in a fixed order with Chan's formula in fp64, so the statistics are
// deterministic, and a large mean costs no digits (each slab's M2 is taken about
// its own mean).
//
// The statistics are of the stored output: every accumulator is rounded to the
// output's type first, as the batch_stats kernel would read it back.
#pragma once

#include "cutlass/cutlass.h"
#include "cutlass/epilogue/thread/linear_combination.h"
#include "cutlass/gemm/gemm.h"
#include "cutlass/numeric_conversion.h"

namespace fused_resnet::cutlass_conv {

// Where the statistics go. partial == nullptr: none are taken.
struct StatsDestination {
  float* partial = nullptr;  // [2, slabs, cols]: slab means, then slab M2s
  int rows = 0;              // M = N * P * Q
  int cols = 0;              // K, the output channels
  int slabs = 0;             // ceil(rows / WarpShape::kM)
};

// y = alpha * acc + beta * C (LinearCombination), its parameters carrying the
// statistics' destination to the epilogue.
template <typename T, int kVec>
class LinearCombinationStats : public cutlass::epilogue::thread::LinearCombination<T, kVec, float, float> {
  using Linear = cutlass::epilogue::thread::LinearCombination<T, kVec, float, float>;

 public:
  struct Params : Linear::Params {
    StatsDestination stats;
    CUTLASS_HOST_DEVICE Params() {}
    CUTLASS_HOST_DEVICE Params(float alpha, float beta, StatsDestination stats = {})
        : Linear::Params(alpha, beta), stats(stats) {}
  };

  CUTLASS_HOST_DEVICE explicit LinearCombinationStats(Params const& params) : Linear(params), stats_(params.stats) {}

  CUTLASS_HOST_DEVICE StatsDestination const& stats() const { return stats_; }

 private:
  StatsDestination stats_;
};

// The stock threadblock epilogue (Stock), preceded by the slab statistics.
//
// Accumulator layout (Sm80 tensor-op, RowMajor accumulators, 16x8 instructions,
// unit OpDelta): element (mma_n * kMmaM + mma_m) * 4 + r * 2 + c of a lane sits at
// warp-tile row mma_m * 16 + r * 8 + lane / 4 and column mma_n * 8 + (lane % 4) * 2 + c.
// A column's rows are spread over the 8 lanes of equal lane % 4 (lane bits 2-4),
// which three xor-shuffles sum.
template <typename Stock, typename InstructionShape, typename Swizzle>
class StatsEpilogue : public Stock {
  using Shape = typename Stock::Shape;
  using WarpCount = typename Stock::WarpCount;
  using Element = typename Stock::OutputTileIterator::Element;
  static constexpr int kWarpM = Shape::kM / WarpCount::kM;
  static constexpr int kWarpN = Shape::kN / WarpCount::kN;
  static constexpr int kMmaM = kWarpM / InstructionShape::kM;
  static constexpr int kMmaN = kWarpN / InstructionShape::kN;
  static constexpr int kSlots = kMmaN * 2;  // the columns of one lane
  static_assert(InstructionShape::kM == 16 && InstructionShape::kN == 8, "the layout above is that of 16x8 MMAs");
  static_assert(WarpCount::kK == 1, "warps split over K hold partial sums, not the output");
  static_assert(Stock::AccumulatorTile::kElements == kMmaM * kMmaN * 4, "unexpected accumulator tile");

 public:
  using OutputOp = typename Stock::OutputOp;
  using OutputTileIterator = typename Stock::OutputTileIterator;
  using AccumulatorTile = typename Stock::AccumulatorTile;
  static constexpr int kSlabRows = kWarpM;

  CUTLASS_DEVICE StatsEpilogue(typename Stock::SharedStorage& storage, int thread_idx, int warp_idx, int lane_idx)
      : Stock(storage, thread_idx, warp_idx, lane_idx), warp_idx_(warp_idx), lane_idx_(lane_idx) {}

  CUTLASS_DEVICE void operator()(OutputOp const& output_op, OutputTileIterator destination,
                                 AccumulatorTile const& accumulators, OutputTileIterator source) {
    if (output_op.stats().partial != nullptr) write_slab_stats(output_op.stats(), accumulators);
    Stock::operator()(output_op, destination, accumulators, source);
  }

 private:
  int warp_idx_, lane_idx_;

  CUTLASS_DEVICE static float warp_column_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 4);
    v += __shfl_xor_sync(0xffffffffu, v, 8);
    v += __shfl_xor_sync(0xffffffffu, v, 16);
    return v;
  }

  // Row i of this lane (mma_m = i / 2, r = i % 2) lies inside the problem.
  CUTLASS_DEVICE static bool is_row(int i, int row0, int rows) { return row0 + (i / 2) * 16 + (i % 2) * 8 < rows; }

  // The value stored for this lane's row i, column j (0 past the last row). Taken
  // again in the second pass rather than kept: the accumulators already fill the registers.
  CUTLASS_DEVICE static float stored(AccumulatorTile const& acc, int i, int j, int row0, int rows) {
    const int mma_m = i / 2, r = i % 2, mma_n = j / 2, c = j % 2;
    cutlass::NumericConverter<Element, float> round;
    return is_row(i, row0, rows) ? static_cast<float>(round(acc[(mma_n * kMmaM + mma_m) * 4 + r * 2 + c])) : 0.f;
  }

  CUTLASS_DEVICE void write_slab_stats(StatsDestination const& dst, AccumulatorTile const& acc) const {
    // An N = 1 identity swizzle maps block (x, y) to tile (m, n) = (x, y) at log-tile 0.
    const cutlass::gemm::GemmCoord tile = Swizzle::get_tile_offset(0);
    const int warp_mn = warp_idx_ % (WarpCount::kM * WarpCount::kN);
    const int warp_m = warp_mn % WarpCount::kM, warp_n = warp_mn / WarpCount::kM;
    const int slab = tile.m() * WarpCount::kM + warp_m;
    const int row0 = slab * kWarpM + lane_idx_ / 4;
    const int col0 = tile.n() * Shape::kN + warp_n * kWarpN + (lane_idx_ % 4) * 2;
    const int count = min(max(dst.rows - slab * kWarpM, 0), kWarpM);
    if (count == 0) return;  // a slab past the last row (uniform over the warp)

    float mean[kSlots], m2[kSlots];
    CUTLASS_PRAGMA_UNROLL
    for (int j = 0; j < kSlots; ++j) {
      float sum = 0.f;
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < kMmaM * 2; ++i) sum += stored(acc, i, j, row0, dst.rows);
      mean[j] = warp_column_sum(sum) / static_cast<float>(count);
      float sq = 0.f;
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < kMmaM * 2; ++i) {
        const float d = stored(acc, i, j, row0, dst.rows) - mean[j];
        sq += is_row(i, row0, dst.rows) ? d * d : 0.f;
      }
      m2[j] = warp_column_sum(sq);
    }
    if (lane_idx_ >= 4) return;  // lanes 0-3 hold every column once
    CUTLASS_PRAGMA_UNROLL
    for (int j = 0; j < kSlots; ++j) {
      const int col = col0 + (j / 2) * 8 + j % 2;
      if (col < dst.cols) {
        dst.partial[(int64_t)slab * dst.cols + col] = mean[j];
        dst.partial[((int64_t)dst.slabs + slab) * dst.cols + col] = m2[j];
      }
    }
  }
};

}  // namespace fused_resnet::cutlass_conv
