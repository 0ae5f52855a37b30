// Helpers every kernel in kernels/ shares; minisd/cuda.py puts this text in front of each .cu
// file before compiling it (NVRTC then needs no include path).
//
// float16 values are kept as their 16 bits and converted with one PTX instruction each way, so
// no CUDA header (cuda_fp16.h) is needed; arithmetic is float32 throughout.

typedef unsigned short half_bits;  // IEEE fp16 storage; converted with PTX, no headers needed

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(half_bits h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ void store(float* p, float x) { *p = x; }
__device__ __forceinline__ void store(half_bits* p, float x) {
    half_bits h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    *p = h;
}

__device__ __forceinline__ float warp_max(float x) {
    for (int offset = 16; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, offset));
    return x;
}
__device__ __forceinline__ float warp_sum(float x) {
    for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffff, x, offset);
    return x;
}
