// Epilogues that work on the accumulators while they are still in registers,
// before the stock CUTLASS epilogue stores them:
//
//   FpropEpilogue (fprop): a per-channel bias and a ReLU, then the per-channel batch
//     statistics of the output, so the output is never read back for them.
//   DgradBnReluEpilogue (dgrad of a convolution with a BatchNorm-apply + ReLU
//     prologue): turns da, the gradient of the activation a = relu(x*s + t), into
//     dx and reduces the gradients of s and t, so da is never stored.
//
// Both reduce over the GEMM's rows (M = N*H*W pixels) per column (channel). The
// rows fall into slabs of WarpShape::kM rows, one per warp row of a threadblock
// tile (slab = tile_m * warps_m + warp_m covers rows [slab * kWarpM, +kWarpM), so
// the slabs tile M in order). Every warp reduces its slab per column and writes
// the result to a [2, slabs, cols] partials buffer; batch_stats.cu merges the
// slabs in a fixed order in fp64. No atomics: the results are deterministic.
#pragma once

#include <type_traits>

#include "cutlass/arch/memory_sm80.h"
#include "cutlass/array.h"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/thread/linear_combination.h"
#include "cutlass/gemm/gemm.h"
#include "cutlass/gemm/threadblock/threadblock_swizzle.h"
#include "cutlass/numeric_conversion.h"

namespace fused_resnet::cutlass_conv {

// What an fprop epilogue applies before the stock store (which adds beta * C, the
// residual, after it), and where the statistics go (partial == nullptr: none taken).
struct FpropEpilogueArgs {
  const float* bias = nullptr;  // [cols], added to every row, or nullptr
  bool relu = false;            // max(., 0) after the bias
  float* partial = nullptr;     // [2, slabs, cols]: slab means, then slab M2s
  int rows = 0;                 // M = N * P * Q
  int cols = 0;                 // K, the output channels
  int slabs = 0;                // ceil(rows / WarpShape::kM)
};

// The forward prologue a = relu(x * scale + shift) whose gradient a dgrad epilogue applies.
struct DgradPrologue {
  const void* x = nullptr;        // [rows, cols]: the forward's input, NHWC
  const float* scale = nullptr;   // [cols]
  const float* shift = nullptr;   // [cols]
  float* partial = nullptr;       // [2, slabs, cols]: slab sums of g_u * x, then of g_u
  int rows = 0, cols = 0, slabs = 0;
};

// y = alpha * acc + beta * C (LinearCombination), its parameters carrying what a
// fused epilogue needs (Extra) to it.
template <typename T, int kVec, typename Extra>
class LinearCombinationWith : public cutlass::epilogue::thread::LinearCombination<T, kVec, float, float> {
  using Linear = cutlass::epilogue::thread::LinearCombination<T, kVec, float, float>;

 public:
  struct Params : Linear::Params {
    Extra extra;
    CUTLASS_HOST_DEVICE Params() {}
    CUTLASS_HOST_DEVICE Params(float alpha, float beta, Extra extra = {}) : Linear::Params(alpha, beta), extra(extra) {}
  };

  CUTLASS_HOST_DEVICE explicit LinearCombinationWith(Params const& params) : Linear(params), extra_(params.extra) {}

  CUTLASS_HOST_DEVICE Extra const& extra() const { return extra_; }

 private:
  Extra extra_;
};

// Where a lane's accumulators sit in the problem.
//
// Layout (Sm80 tensor-op, 16x8 instructions, unit OpDelta; the warp's MMA tiles in
// column-major order, as MmaTensorOp keeps them without AccumulatorsInRowMajor):
// element (mma_n * kMmaM + mma_m) * 4 + r * 2 + c of a lane sits at warp-tile row
// mma_m * 16 + r * 8 + lane / 4 and column mma_n * 8 + (lane % 4) * 2 + c. A lane
// thus holds kRows rows (i = mma_m * 2 + r) of kCols columns (j = mma_n * 2 + c); a
// column's rows are spread over the 8 lanes of equal lane % 4 (lane bits 2-4),
// which three xor-shuffles sum, leaving lanes 0-3 with every column once.
template <typename Stock, typename InstructionShape, typename Swizzle>
struct AccumulatorMap {
  using Shape = typename Stock::Shape;
  using WarpCount = typename Stock::WarpCount;
  static constexpr int kWarpM = Shape::kM / WarpCount::kM;
  static constexpr int kWarpN = Shape::kN / WarpCount::kN;
  static constexpr int kMmaM = kWarpM / InstructionShape::kM;
  static constexpr int kMmaN = kWarpN / InstructionShape::kN;
  static constexpr int kRows = kMmaM * 2;
  static constexpr int kCols = kMmaN * 2;
  static_assert(InstructionShape::kM == 16 && InstructionShape::kN == 8, "the layout above is that of 16x8 MMAs");
  static_assert(WarpCount::kK == 1, "warps split over K hold partial sums, not the output");
  static_assert(std::is_same_v<Swizzle, cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<1>>,
                "the tile of a threadblock is taken at log-tile 0, which only the N = 1 identity swizzle uses");
  static_assert(Stock::AccumulatorTile::kElements == kRows * kCols, "unexpected accumulator tile");

  int slab;  // this warp's slab of rows
  int row0;  // the problem row of this lane's row i = 0
  int col0;  // the problem column of this lane's column j = 0

  CUTLASS_DEVICE AccumulatorMap(int warp_idx, int lane_idx) {
    // An N = 1 identity swizzle maps block (x, y) to tile (m, n) = (x, y) at log-tile 0.
    const cutlass::gemm::GemmCoord tile = Swizzle::get_tile_offset(0);
    const int warp_mn = warp_idx % (WarpCount::kM * WarpCount::kN);
    const int warp_m = warp_mn % WarpCount::kM, warp_n = warp_mn / WarpCount::kM;
    slab = tile.m() * WarpCount::kM + warp_m;
    row0 = slab * kWarpM + lane_idx / 4;
    col0 = tile.n() * Shape::kN + warp_n * kWarpN + (lane_idx % 4) * 2;
  }

  CUTLASS_DEVICE static int index(int i, int j) { return ((j / 2) * kMmaM + i / 2) * 4 + (i % 2) * 2 + j % 2; }
  CUTLASS_DEVICE int row(int i) const { return row0 + (i / 2) * 16 + (i % 2) * 8; }
  CUTLASS_DEVICE int col(int j) const { return col0 + (j / 2) * 8 + j % 2; }
  // Rows of this warp's slab inside the problem (0 for a slab past the last row).
  CUTLASS_DEVICE int slab_count(int rows) const { return min(max(rows - slab * kWarpM, 0), kWarpM); }

  CUTLASS_DEVICE static float column_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 4);
    v += __shfl_xor_sync(0xffffffffu, v, 8);
    v += __shfl_xor_sync(0xffffffffu, v, 16);
    return v;
  }
};

// The stock epilogue with a per-warp slab reduction before it: what both fused
// epilogues share (the accumulator map, and the write of two per-column values).
template <typename Stock, typename InstructionShape, typename Swizzle>
class SlabEpilogue : public Stock {
 public:
  using OutputOp = typename Stock::OutputOp;
  using OutputTileIterator = typename Stock::OutputTileIterator;
  using AccumulatorTile = typename Stock::AccumulatorTile;

  CUTLASS_DEVICE SlabEpilogue(typename Stock::SharedStorage& storage, int thread_idx, int warp_idx, int lane_idx)
      : Stock(storage, thread_idx, warp_idx, lane_idx), map_(warp_idx, lane_idx), lane_idx_(lane_idx) {}

 protected:
  using Map = AccumulatorMap<Stock, InstructionShape, Swizzle>;
  using Element = typename Stock::OutputTileIterator::Element;

  Map map_;
  int lane_idx_;

  // first and second (already summed over the warp's rows) of each of this lane's
  // columns into partial[0][slab] and partial[1][slab] ([2, slabs, cols]); lanes 0-3
  // hold every column of the warp once.
  CUTLASS_DEVICE void write_slab(float* partial, int cols, int slabs, float const (&first)[Map::kCols],
                                 float const (&second)[Map::kCols]) const {
    if (lane_idx_ >= 4) return;
    CUTLASS_PRAGMA_UNROLL
    for (int j = 0; j < Map::kCols; ++j) {
      if (map_.col(j) < cols) {
        partial[(int64_t)map_.slab * cols + map_.col(j)] = first[j];
        partial[((int64_t)slabs + map_.slab) * cols + map_.col(j)] = second[j];
      }
    }
  }
};

// The stock epilogue preceded by, in registers: the bias and the ReLU (the
// accumulators are replaced by their result), then the slab statistics of the
// values stored (every value rounded to the output's type, as a read-back would see
// it): per column, the slab's mean and M2 about that mean (two passes over the
// registers), so a large mean costs no digits.
template <typename Stock, typename InstructionShape, typename Swizzle>
class FpropEpilogue : public SlabEpilogue<Stock, InstructionShape, Swizzle> {
  using Base = SlabEpilogue<Stock, InstructionShape, Swizzle>;
  using typename Base::Element;
  using typename Base::Map;

 public:
  using Base::Base;

  // The kernel's accumulators are its own local, not used after the epilogue: they
  // are transformed in place.
  CUTLASS_DEVICE void operator()(typename Base::OutputOp const& output_op,
                                 typename Base::OutputTileIterator destination,
                                 typename Base::AccumulatorTile& accumulators,
                                 typename Base::OutputTileIterator source) {
    FpropEpilogueArgs const& args = output_op.extra();
    if (args.bias != nullptr || args.relu) apply_bias_relu(args, accumulators);
    if (args.partial != nullptr) write_slab_stats(args, accumulators);
    Stock::operator()(output_op, destination, accumulators, source);
  }

 private:
  CUTLASS_DEVICE void apply_bias_relu(FpropEpilogueArgs const& args, typename Base::AccumulatorTile& acc) const {
    CUTLASS_PRAGMA_UNROLL
    for (int j = 0; j < Map::kCols; ++j) {
      const int c = this->map_.col(j);
      const float b = args.bias != nullptr && c < args.cols ? args.bias[c] : 0.f;
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < Map::kRows; ++i) {
        const float v = acc[Map::index(i, j)] + b;
        acc[Map::index(i, j)] = args.relu && v < 0.f ? 0.f : v;
      }
    }
  }

  // The value stored for this lane's row i, column j (0 past the last row). Taken
  // again in the second pass rather than kept: the accumulators already fill the registers.
  CUTLASS_DEVICE float stored(typename Base::AccumulatorTile const& acc, int i, int j, int rows) const {
    cutlass::NumericConverter<Element, float> round;
    return this->map_.row(i) < rows ? static_cast<float>(round(acc[Map::index(i, j)])) : 0.f;
  }

  CUTLASS_DEVICE void write_slab_stats(FpropEpilogueArgs const& dst,
                                       typename Base::AccumulatorTile const& acc) const {
    const int count = this->map_.slab_count(dst.rows);
    if (count == 0) return;  // uniform over the warp
    float mean[Map::kCols], m2[Map::kCols];
    CUTLASS_PRAGMA_UNROLL
    for (int j = 0; j < Map::kCols; ++j) {
      float sum = 0.f;
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < Map::kRows; ++i) sum += stored(acc, i, j, dst.rows);
      mean[j] = Map::column_sum(sum) / static_cast<float>(count);
      float sq = 0.f;
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < Map::kRows; ++i) {
        const float d = stored(acc, i, j, dst.rows) - mean[j];
        sq += this->map_.row(i) < dst.rows ? d * d : 0.f;
      }
      m2[j] = Map::column_sum(sq);
    }
    this->write_slab(dst.partial, dst.cols, dst.slabs, mean, m2);
  }
};

// dgrad of conv(relu(x*s + t), W): the accumulators are da. With u = x*s + t:
//   g_u = da * (u > 0),   dx = g_u * s,   ds = sum(g_u * x),   dt = sum(g_u)
// (u in fp32, as the reference computes it). The accumulators are replaced by dx,
// which the stock epilogue stores; ds and dt leave as slab sums.
template <typename Stock, typename InstructionShape, typename Swizzle>
class DgradBnReluEpilogue : public SlabEpilogue<Stock, InstructionShape, Swizzle> {
  using Base = SlabEpilogue<Stock, InstructionShape, Swizzle>;
  using typename Base::Element;
  using typename Base::Map;

 public:
  using Base::Base;

  // The kernel's accumulators are its own local, not used after the epilogue: they
  // are transformed in place.
  CUTLASS_DEVICE void operator()(typename Base::OutputOp const& output_op,
                                 typename Base::OutputTileIterator destination,
                                 typename Base::AccumulatorTile& accumulators,
                                 typename Base::OutputTileIterator source) {
    apply_prologue_gradient(output_op.extra(), accumulators);
    Stock::operator()(output_op, destination, accumulators, source);
  }

 private:
  CUTLASS_DEVICE void apply_prologue_gradient(DgradPrologue const& p, typename Base::AccumulatorTile& acc) const {
    const Map& map = this->map_;
    const Element* x = static_cast<const Element*>(p.x);
    float gx[Map::kCols], g[Map::kCols];
    CUTLASS_PRAGMA_UNROLL
    for (int j = 0; j < Map::kCols; j += 2) {
      // Columns j and j + 1 are adjacent channels (col(j) even; cols a multiple of 8).
      const int c = map.col(j);
      const bool col_ok = c < p.cols;
      const float s0 = col_ok ? p.scale[c] : 0.f, s1 = col_ok ? p.scale[c + 1] : 0.f;
      const float t0 = col_ok ? p.shift[c] : 0.f, t1 = col_ok ? p.shift[c + 1] : 0.f;
      gx[j] = gx[j + 1] = g[j] = g[j + 1] = 0.f;
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < Map::kRows; ++i) {
        cutlass::Array<Element, 2> xv;
        xv.clear();
        const bool ok = col_ok && map.row(i) < p.rows;
        if (ok) xv = *reinterpret_cast<const cutlass::Array<Element, 2>*>(x + (int64_t)map.row(i) * p.cols + c);
        const Element e0 = xv[0], e1 = xv[1];
        const float x0 = static_cast<float>(e0), x1 = static_cast<float>(e1);
        // u as the mainloop prologue computes it (one fma), so the mask is the forward's,
        // which also reads the padding pattern as 0 (scale_bias_fp32.cuh); torch's ReLU
        // gradient rule: zero where u <= 0, passed where u is NaN.
        const bool live0 = ok && e0.raw() != cutlass::arch::OOB_NAN_F16 && !(fmaf(x0, s0, t0) <= 0.f);
        const bool live1 = ok && e1.raw() != cutlass::arch::OOB_NAN_F16 && !(fmaf(x1, s1, t1) <= 0.f);
        const float g0 = live0 ? acc[Map::index(i, j)] : 0.f;
        const float g1 = live1 ? acc[Map::index(i, j + 1)] : 0.f;
        acc[Map::index(i, j)] = g0 * s0;
        acc[Map::index(i, j + 1)] = g1 * s1;
        gx[j] += g0 * x0;
        gx[j + 1] += g1 * x1;
        g[j] += g0;
        g[j + 1] += g1;
      }
    }
    if (map.slab_count(p.rows) == 0) return;  // uniform over the warp
    CUTLASS_PRAGMA_UNROLL
    for (int j = 0; j < Map::kCols; ++j) {
      gx[j] = Map::column_sum(gx[j]);
      g[j] = Map::column_sum(g[j]);
    }
    this->write_slab(p.partial, p.cols, p.slabs, gx, g);
  }
};

}  // namespace fused_resnet::cutlass_conv
