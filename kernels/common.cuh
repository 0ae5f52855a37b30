// Helpers every kernel in kernels/ shares; minisd/cuda.py puts this text in front of each .cu
// file before compiling it (NVRTC then needs no include path).
//
// float16 values are kept as their 16 bits and converted with one PTX instruction each way, so
// no CUDA header (cuda_fp16.h) is needed; arithmetic is float32 throughout. The functions that
// are PTX (half conversions, the tensor-core product) are the only hardware-specific code: the
// CPU emulator the tests run the kernels in (tests/cuda_emulator.h) defines its own versions of
// exactly these, with the same meaning.

typedef unsigned short half_bits;  // IEEE fp16 storage; converted with PTX, no headers needed

#ifndef MINISD_CPU_EMULATOR
__device__ __forceinline__ float to_float(half_bits h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ half_bits to_half(float x) {  // round to nearest even
    half_bits h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    return h;
}

// One warp-wide tensor-core product, d += a b, with a 16 x 16 (fp16), b 16 x 8 (fp16) and
// d 16 x 8 (fp32) spread over the 32 lanes of the warp as the PTX ISA's mma.m16n8k16 fragments.
// With group = lane / 4 and pair = lane % 4, each lane holds
//   a[0] = A[group][2·pair, +1]    a[1] = A[group+8][2·pair, +1]
//   a[2] = A[group][2·pair+8, +9]  a[3] = A[group+8][2·pair+8, +9]   (two fp16 per register,
//   b[0] = B[2·pair, +1][group]    b[1] = B[2·pair+8, +9][group]      the lower index in the low bits)
//   d[0], d[1] = D[group][2·pair, +1]  d[2], d[3] = D[group+8][2·pair, +1]
// Every lane of the warp must call it together (Ampere, sm_80, and later).
__device__ __forceinline__ void mma_16x8x16(float* d, const unsigned* a, const unsigned* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ void store(float* p, float x) { *p = x; }
__device__ __forceinline__ void store(half_bits* p, float x) { *p = to_half(x); }

// Two fp16 values in one 32-bit register, as the tensor cores take them: lo in the low bits.
__device__ __forceinline__ unsigned pack_halves(float lo, float hi) {
    return (unsigned)to_half(lo) | ((unsigned)to_half(hi) << 16);
}

__device__ __forceinline__ float warp_max(float x) {
    for (int offset = 16; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, offset));
    return x;
}
__device__ __forceinline__ float warp_sum(float x) {
    for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffff, x, offset);
    return x;
}
