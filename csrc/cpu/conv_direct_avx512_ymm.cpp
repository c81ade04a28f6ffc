#define PYL_SIMD_NS avx512_ymm
#define PYL_VEC_WIDTH 8  // AVX-512VL at 8 lanes: see simd.h (lanes512)
#include "cpu/conv_direct_kernel.inc"
