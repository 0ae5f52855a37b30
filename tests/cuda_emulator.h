// A CPU stand-in for the little of CUDA that kernels/*.cu use, so the tests can run our kernels
// on a machine without a GPU (tests/cuda_emulator.py compiles common.cuh + a kernel file after
// this header with g++).
//
// Every CUDA thread of a block is a real thread; they run the grid's blocks one after another:
// __syncthreads is a barrier over the block, and the warp operations (__syncwarp, shuffles, the
// tensor-core product) are barriers over the warp's 32 threads with an exchange of registers in
// between. __shared__ arrays become static ones, shared by the threads of the one block running.
// The hardware-specific functions of kernels/common.cuh (half conversions, mma_16x8x16) are
// written here in C++ from their PTX definitions. What this cannot show: speed, and races that
// real hardware would expose but these threads happen not to.

#include <barrier>
#include <chrono>
#include <condition_variable>
#include <math.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#define MINISD_CPU_EMULATOR
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
thread_local dim3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

// ---- synchronisation ----------------------------------------------------------------------

struct Warp {
    std::barrier<> barrier{32};
    unsigned words[32][6];  // what each lane hands to the others: a shuffled value, or mma's a[4] and b[2]
};
std::unique_ptr<std::barrier<>> block_barrier;
std::vector<std::unique_ptr<Warp>> warps;
thread_local Warp* my_warp;
thread_local int my_lane;

inline void __syncthreads() { block_barrier->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffff) { my_warp->barrier.arrive_and_wait(); }

template <typename T>
T __shfl_xor_sync(unsigned, T x, int offset) {
    static_assert(sizeof(T) == 4, "32-bit shuffles only");
    std::memcpy(my_warp->words[my_lane], &x, 4);
    __syncwarp();
    T y;
    std::memcpy(&y, my_warp->words[my_lane ^ offset], 4);
    __syncwarp();  // every lane has read before the next exchange writes
    return y;
}

// ---- math the kernels call ----------------------------------------------------------------

inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }


// ---- kernels/common.cuh's hardware-specific functions ---------------------------------------

typedef unsigned short half_bits;

inline float to_float(half_bits h) {
    _Float16 f;
    std::memcpy(&f, &h, 2);
    return (float)f;
}
inline half_bits to_half(float x) {  // round to nearest even, as cvt.rn.f16.f32
    _Float16 f = (_Float16)x;
    half_bits h;
    std::memcpy(&h, &f, 2);
    return h;
}
inline float half_at(unsigned word, int which) { return to_float((half_bits)(word >> (16 * which))); }

// d += a b for one warp, the fragments laid out as the PTX ISA defines mma.m16n8k16 (see
// common.cuh): every lane hands its a, b and d to the warp, then computes its own four d.
inline void mma_16x8x16(float* d, const unsigned* a, const unsigned* b) {
    unsigned* mine = my_warp->words[my_lane];
    std::memcpy(mine, a, 16);
    std::memcpy(mine + 4, b, 8);
    __syncwarp();
    auto A = [](int row, int k) {  // held by lane (row % 8)·4 + (k % 8)/2, register row/8 + 2·(k/8)
        return half_at(my_warp->words[(row % 8) * 4 + (k % 8) / 2][row / 8 + 2 * (k / 8)], k % 2);
    };
    auto B = [](int k, int column) {  // lane column·4 + (k % 8)/2, register 4 + k/8
        return half_at(my_warp->words[column * 4 + (k % 8) / 2][4 + k / 8], k % 2);
    };
    float result[4];
    for (int i = 0; i < 4; ++i) {
        const int row = my_lane / 4 + 8 * (i / 2), column = 2 * (my_lane % 4) + i % 2;
        float sum = d[i];
        for (int k = 0; k < 16; ++k) sum += A(row, k) * B(k, column);
        result[i] = sum;
    }
    __syncwarp();  // every lane has read the fragments
    std::memcpy(d, result, 16);
}

// ---- launching ----------------------------------------------------------------------------

// Calls kernel with its arguments taken from args[i], pointers to each value, as cuLaunchKernel.
template <typename... P, std::size_t... I>
void call_with(void (*kernel)(P...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<P*>(args[I])...);
}

constexpr auto HANG_LIMIT = std::chrono::seconds(120);

// Runs the grid: blockDim threads, which go through the blocks one after another together.
template <typename... P>
void launch(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, void** args) {
    gridDim = grid;
    blockDim = block;
    const unsigned threads = block.x * block.y * block.z, blocks = grid.x * grid.y * grid.z;
    if (threads % 32 != 0) {
        std::fprintf(stderr, "emulated %s: %u threads per block, not whole warps\n", name, threads);
        std::abort();
    }
    block_barrier = std::make_unique<std::barrier<>>(threads);
    warps.clear();
    for (unsigned w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<Warp>());
    std::mutex mutex;
    std::condition_variable finished;
    unsigned running = threads;
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            threadIdx = {t % block.x, t / block.x % block.y, t / (block.x * block.y)};
            my_warp = warps[t / 32].get();
            my_lane = t % 32;
            for (unsigned b = 0; b < blocks; ++b) {
                blockIdx = {b % grid.x, b / grid.x % grid.y, b / (grid.x * grid.y)};
                call_with(kernel, args, std::index_sequence_for<P...>{});
                __syncthreads();  // the block is done before the next one reuses shared memory
            }
            std::lock_guard<std::mutex> lock(mutex);
            if (--running == 0) finished.notify_one();
        });
    std::unique_lock<std::mutex> lock(mutex);
    if (!finished.wait_for(lock, HANG_LIMIT, [&] { return running == 0; })) {
        std::fprintf(stderr, "emulated %s hangs: some thread never reached a __syncthreads, __syncwarp, "
                             "shuffle or mma that the others wait at\n", name);
        std::_Exit(3);
    }
    lock.unlock();
    for (auto& thread : pool) thread.join();
}

// One C entry point per kernel: emulate_<name>(grid x, y, z, block x, y, z, argument pointers).
#define EMULATE(NAME)                                                                             \
    extern "C" void emulate_##NAME(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, \
                                   unsigned bz, void** args) {                                    \
        launch(#NAME, NAME, dim3{gx, gy, gz}, dim3{bx, by, bz}, args);                             \
    }
