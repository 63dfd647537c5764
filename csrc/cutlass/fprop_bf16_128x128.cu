// fprop with the BN + ReLU prologue: bfloat16, 128x128x32 tiles (output channels > 64).
#include "prologue_conv.cuh"

namespace fused_resnet::prologue {
extern const PrologueConvKernel kFpropBF16Wide = make_kernel<
    Fprop<cutlass::bfloat16_t, cutlass::gemm::GemmShape<128, 128, 32>, cutlass::gemm::GemmShape<64, 64, 32>, 4>>(
    "fprop_prologue_bf16_128x128x32");
}
