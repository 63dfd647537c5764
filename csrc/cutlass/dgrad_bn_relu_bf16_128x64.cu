// unit-stride dgrad with the BN + ReLU prologue's gradient in the epilogue: bfloat16, 128x64x32 tiles
// (narrow: input channels <= 64).
#include "conv.cuh"

namespace fused_resnet::cutlass_conv {
extern const CutlassConvKernel kDgradBnReluBF16Narrow = make_kernel<
    DgradBnRelu<cutlass::bfloat16_t, cutlass::gemm::GemmShape<128, 64, 32>, cutlass::gemm::GemmShape<64, 32, 32>, 4>>("dgrad_bn_relu_bf16_128x64x32");
}
