// fprop with the BN + ReLU prologue: float16, 128x64x32 tiles (output channels <= 64).
#include "prologue_conv.cuh"

namespace fused_resnet::prologue {
extern const PrologueConvKernel kFpropF16Narrow = make_kernel<
    Fprop<cutlass::half_t, cutlass::gemm::GemmShape<128, 64, 32>, cutlass::gemm::GemmShape<64, 32, 32>, 4>>(
    "fprop_prologue_f16_128x64x32");
}
