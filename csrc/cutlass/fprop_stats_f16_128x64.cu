// fprop with the batch statistics in the epilogue: float16, 128x64x32 tiles (narrow: output channels <= 64).
#include "conv.cuh"

namespace fused_resnet::cutlass_conv {
extern const CutlassConvKernel kFpropStatsF16Narrow = make_kernel<
    FpropStats<cutlass::half_t, cutlass::gemm::GemmShape<128, 64, 32>, cutlass::gemm::GemmShape<64, 32, 32>, 4>>("fprop_stats_f16_128x64x32");
}
