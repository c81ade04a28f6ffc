#define PYL_GEMM_NS avx2
#define PYL_VEC_WIDTH 8
#include "cpu/gemm_kernel.inc"
