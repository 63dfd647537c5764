// The CUTLASS prologue convolutions compiled into _C (one per csrc/cutlass/*.cu),
// looked up by element type and tile configuration.
#include "prologue_conv.h"

namespace fused_resnet {
namespace prologue {
extern const PrologueConvKernel kFpropF16Wide, kFpropBF16Wide, kFpropF16Narrow, kFpropBF16Narrow;
extern const PrologueConvKernel kWgradF16, kWgradBF16;
}  // namespace prologue

const PrologueConvKernel& fprop_prologue_kernel(int element, int tile) {
  using namespace prologue;
  if (element == 0) return tile == 0 ? kFpropF16Wide : kFpropF16Narrow;
  return tile == 0 ? kFpropBF16Wide : kFpropBF16Narrow;
}

const PrologueConvKernel& wgrad_prologue_kernel(int element) {
  return element == 0 ? prologue::kWgradF16 : prologue::kWgradBF16;
}

}  // namespace fused_resnet
