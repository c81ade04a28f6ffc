#define PYL_GEMM_NS scalar
#define PYL_VEC_WIDTH 4
#include "cpu/gemm_kernel.inc"
