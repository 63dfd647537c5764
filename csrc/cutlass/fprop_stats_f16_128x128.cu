// fprop with the batch statistics in the epilogue: float16, 128x128x32 tiles (wide: output channels > 64).
#include "conv.cuh"

namespace fused_resnet::cutlass_conv {
extern const CutlassConvKernel kFpropStatsF16Wide = make_kernel<
    FpropStats<cutlass::half_t, cutlass::gemm::GemmShape<128, 128, 32>, cutlass::gemm::GemmShape<64, 64, 32>, 4>>("fprop_stats_f16_128x128x32");
}
