#define PYL_SIMD_NS avx2
#define PYL_VEC_WIDTH 8
#include "cpu/conv_winograd_kernel.inc"
