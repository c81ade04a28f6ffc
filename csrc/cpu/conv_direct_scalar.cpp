#define PYL_SIMD_NS scalar
#define PYL_VEC_WIDTH 4
#include "cpu/conv_direct_kernel.inc"
