// The CUTLASS convolutions compiled into _C (one per csrc/cutlass/*.cu), looked
// up by kind, element type and tile configuration.
#include "cutlass_conv.h"

namespace fused_resnet {
namespace cutlass_conv {
extern const CutlassConvKernel kFpropPrologueF16Wide, kFpropPrologueF16Narrow, kFpropPrologueBF16Wide,
    kFpropPrologueBF16Narrow;
extern const CutlassConvKernel kFpropBiasReluF16Wide, kFpropBiasReluF16Narrow, kFpropBiasReluBF16Wide,
    kFpropBiasReluBF16Narrow;
extern const CutlassConvKernel kWgradPrologueF16Wide, kWgradPrologueBF16Wide;
extern const CutlassConvKernel kFpropStatsF16Wide, kFpropStatsF16Narrow, kFpropStatsBF16Wide, kFpropStatsBF16Narrow;
extern const CutlassConvKernel kDgradBnReluF16Wide, kDgradBnReluF16Narrow, kDgradBnReluBF16Wide,
    kDgradBnReluBF16Narrow;

// [kind][element][tile]; wgrad has one tile, listed twice.
const CutlassConvKernel* const kTable[5][2][2] = {
    {{&kFpropPrologueF16Wide, &kFpropPrologueF16Narrow}, {&kFpropPrologueBF16Wide, &kFpropPrologueBF16Narrow}},
    {{&kFpropBiasReluF16Wide, &kFpropBiasReluF16Narrow}, {&kFpropBiasReluBF16Wide, &kFpropBiasReluBF16Narrow}},
    {{&kWgradPrologueF16Wide, &kWgradPrologueF16Wide}, {&kWgradPrologueBF16Wide, &kWgradPrologueBF16Wide}},
    {{&kFpropStatsF16Wide, &kFpropStatsF16Narrow}, {&kFpropStatsBF16Wide, &kFpropStatsBF16Narrow}},
    {{&kDgradBnReluF16Wide, &kDgradBnReluF16Narrow}, {&kDgradBnReluBF16Wide, &kDgradBnReluBF16Narrow}},
};

const CutlassConvKernel* const kAll[] = {
    &kFpropPrologueF16Wide,  &kFpropPrologueF16Narrow,  &kFpropPrologueBF16Wide,  &kFpropPrologueBF16Narrow,
    &kFpropBiasReluF16Wide,  &kFpropBiasReluF16Narrow,  &kFpropBiasReluBF16Wide,  &kFpropBiasReluBF16Narrow,
    &kWgradPrologueF16Wide,  &kWgradPrologueBF16Wide,
    &kFpropStatsF16Wide,     &kFpropStatsF16Narrow,     &kFpropStatsBF16Wide,     &kFpropStatsBF16Narrow,
    &kDgradBnReluF16Wide,    &kDgradBnReluF16Narrow,    &kDgradBnReluBF16Wide,    &kDgradBnReluBF16Narrow,
};
}  // namespace cutlass_conv

const CutlassConvKernel& cutlass_conv_kernel(ConvKind kind, ConvElement element, ConvTile tile) {
  return *cutlass_conv::kTable[static_cast<int>(kind)][static_cast<int>(element)][static_cast<int>(tile)];
}

const CutlassConvKernel* const* cutlass_conv_kernels(int* count) {
  *count = static_cast<int>(sizeof(cutlass_conv::kAll) / sizeof(cutlass_conv::kAll[0]));
  return cutlass_conv::kAll;
}

}  // namespace fused_resnet
