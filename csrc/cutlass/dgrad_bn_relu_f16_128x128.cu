// unit-stride dgrad with the BN + ReLU prologue's gradient in the epilogue: float16, 128x128x32 tiles
// (wide: input channels > 64).
#include "conv.cuh"

namespace fused_resnet::cutlass_conv {
extern const CutlassConvKernel kDgradBnReluF16Wide = make_kernel<
    DgradBnRelu<cutlass::half_t, cutlass::gemm::GemmShape<128, 128, 32>, cutlass::gemm::GemmShape<64, 64, 32>, 4>>("dgrad_bn_relu_f16_128x128x32");
}
