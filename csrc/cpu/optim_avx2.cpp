#define PYL_SIMD_NS avx2
#define PYL_VEC_WIDTH 8
#include "cpu/optim_kernel.inc"
