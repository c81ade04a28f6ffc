#define PYL_GEMM_NS avx512
#define PYL_VEC_WIDTH 16
#include "cpu/gemm_kernel.inc"
