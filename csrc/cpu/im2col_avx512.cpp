#define PYL_SIMD_NS avx512
#define PYL_VEC_WIDTH 8  // 8-wide on purpose: see im2col_kernel.inc
#include "cpu/im2col_kernel.inc"
