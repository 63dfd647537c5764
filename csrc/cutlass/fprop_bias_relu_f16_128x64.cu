// fprop with bias + residual + ReLU in the epilogue: float16, 128x64x32 tiles (narrow: output channels <= 64).
#include "conv.cuh"

namespace fused_resnet::cutlass_conv {
extern const CutlassConvKernel kFpropBiasReluF16Narrow = make_kernel<
    FpropBiasRelu<cutlass::half_t, cutlass::gemm::GemmShape<128, 64, 32>, cutlass::gemm::GemmShape<64, 32, 32>, 4>>("fprop_bias_relu_f16_128x64x32");
}
