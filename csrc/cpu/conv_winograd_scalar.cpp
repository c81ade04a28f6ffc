#define PYL_SIMD_NS scalar
#define PYL_VEC_WIDTH 4
#include "cpu/conv_winograd_kernel.inc"
