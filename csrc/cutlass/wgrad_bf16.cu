// wgrad with the BN + ReLU prologue on the activation: bfloat16, 128x128x32 tiles.
#include "prologue_conv.cuh"

namespace fused_resnet::prologue {
extern const PrologueConvKernel kWgradBF16 = make_kernel<
    Wgrad<cutlass::bfloat16_t, cutlass::gemm::GemmShape<128, 128, 32>, cutlass::gemm::GemmShape<64, 64, 32>, 4>>(
    "wgrad_prologue_bf16_128x128x32");
}
