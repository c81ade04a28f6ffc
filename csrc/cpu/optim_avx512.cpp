#define PYL_SIMD_NS avx512
#define PYL_VEC_WIDTH 16
#include "cpu/optim_kernel.inc"
