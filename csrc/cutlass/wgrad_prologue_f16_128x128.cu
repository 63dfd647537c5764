// wgrad with the BN + ReLU prologue on the activation: float16, 128x128x32 tiles (the one wgrad tile).
#include "conv.cuh"

namespace fused_resnet::cutlass_conv {
extern const CutlassConvKernel kWgradPrologueF16Wide = make_kernel<
    WgradPrologue<cutlass::half_t, cutlass::gemm::GemmShape<128, 128, 32>, cutlass::gemm::GemmShape<64, 64, 32>, 4>>("wgrad_prologue_f16_128x128x32");
}
