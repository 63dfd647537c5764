// wgrad with the BN + ReLU prologue on the activation: float16, 128x128x32 tiles.
#include "prologue_conv.cuh"

namespace fused_resnet::prologue {
extern const PrologueConvKernel kWgradF16 = make_kernel<
    Wgrad<cutlass::half_t, cutlass::gemm::GemmShape<128, 128, 32>, cutlass::gemm::GemmShape<64, 64, 32>, 4>>(
    "wgrad_prologue_f16_128x128x32");
}
