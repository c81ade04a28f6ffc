#define PYL_SIMD_NS scalar
#define PYL_VEC_WIDTH 4
#include "cpu/optim_kernel.inc"
