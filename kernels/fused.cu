// Fused GroupNorm, LayerNorm, GEGLU and SiLU: one kernel each where CuPy would launch one per
// operation (GroupNorm and LayerNorm are ~10 passes over their input in nn.py's array code,
// SiLU 6, GEGLU's exact GELU ~30). All are memory-bound (python -m minisd.roofline: 14 % of a
// UNet step's floor on an H100), so what counts is reading and writing each value as few times
// as possible, and launching few kernels.
//
// group_norm: x (B, C, H·W) in G groups of C/G channels. For each (batch item, group):
//     mean = Σ x / n,  var = Σ (x − mean)² / n  (n = C/G · H·W, float32, the two-pass formula of nn.py)
//     y = (x − mean) / √(var + eps) · γ_c + β_c
// Tiling: grid = B·G blocks of THREADS threads, one block per group (its values are contiguous).
// The block reads its group three times (sum, squared deviations, output); a group of SD's UNet
// holds at most 10 channels × 4096 pixels (80 KB in float16), so the second and third reads
// come mostly from L2. γ, β: (C,), stored like x (a norm's parameters are in the activations' dtype).
//
// layer_norm: x (N, D), each row (a token's feature vector) normalised as a group above, with
// γ_d, β_d per feature. One warp per row, THREADS / 32 rows per block; a row (at most 1280
// values in SD) is read three times, the second and third from L1.
//
// geglu: projected (N, 2·inner) -> out (N, inner): out = h · GELU(g), h the first half of a
// row and g the second, GELU(g) = ½ g (1 + erf(g / √2)) (exact, as diffusers). One thread per
// output value.
//
// silu: out = x · σ(α x), σ(z) = ½ (1 + tanh(z / 2)) as nn.sigmoid: SiLU for α = 1, CLIP's quick
// GELU for α = 1.702. One thread per value; out may be x itself.
//
// Shapes covered: any (float32 and float16 storage, float32 arithmetic).

#define THREADS 256

// The sum of x over the block's threads, returned to every thread.
__device__ float block_sum(float x) {
    __shared__ float partial[THREADS / 32];
    x = warp_sum(x);
    __syncthreads();  // the previous call's readers are done with `partial`
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = x;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < THREADS / 32; ++w) total += partial[w];
    return total;
}

template <typename T>
__device__ void group_norm(const T* __restrict__ x, const T* __restrict__ gamma, const T* __restrict__ beta,
                           T* __restrict__ out, int channels, int groups, int pixels, float eps) {
    const int per_group = channels / groups;
    const long n = (long)per_group * pixels;
    const int first_channel = (blockIdx.x % groups) * per_group;
    const T* in = x + (long)blockIdx.x * n;  // block b·G + g: group g of batch item b
    T* y = out + (long)blockIdx.x * n;

    float sum = 0.0f;
    for (long i = threadIdx.x; i < n; i += THREADS) sum += to_float(in[i]);
    const float mean = block_sum(sum) / n;
    float squares = 0.0f;
    for (long i = threadIdx.x; i < n; i += THREADS) {
        const float d = to_float(in[i]) - mean;
        squares += d * d;
    }
    const float inv_std = rsqrtf(block_sum(squares) / n + eps);
    for (long i = threadIdx.x; i < n; i += THREADS) {
        const int c = first_channel + (int)(i / pixels);
        store(y + i, (to_float(in[i]) - mean) * inv_std * to_float(gamma[c]) + to_float(beta[c]));
    }
}

template <typename T>
__device__ void layer_norm(const T* __restrict__ x, const T* __restrict__ gamma, const T* __restrict__ beta,
                           T* __restrict__ out, long rows, int features, float eps) {
    const long row = (long)blockIdx.x * (THREADS / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;  // the whole warp: no block-wide barrier follows
    const T* in = x + row * features;
    T* y = out + row * features;

    float sum = 0.0f;
    for (int i = lane; i < features; i += 32) sum += to_float(in[i]);
    const float mean = warp_sum(sum) / features;
    float squares = 0.0f;
    for (int i = lane; i < features; i += 32) {
        const float d = to_float(in[i]) - mean;
        squares += d * d;
    }
    const float inv_std = rsqrtf(warp_sum(squares) / features + eps);
    for (int i = lane; i < features; i += 32)
        store(y + i, (to_float(in[i]) - mean) * inv_std * to_float(gamma[i]) + to_float(beta[i]));
}

template <typename T>
__device__ void silu(const T* x, T* out, long count, float alpha) {  // x and out may alias
    const long i = (long)blockIdx.x * THREADS + threadIdx.x;
    if (i >= count) return;
    const float v = to_float(x[i]);
    store(out + i, v * 0.5f * (1.0f + tanhf(0.5f * alpha * v)));
}

template <typename T>
__device__ void geglu(const T* __restrict__ projected, T* __restrict__ out, long count, int inner) {
    const long i = (long)blockIdx.x * THREADS + threadIdx.x;
    if (i >= count) return;
    const long row = i / inner, column = i % inner;
    const float h = to_float(projected[row * 2 * inner + column]);
    const float g = to_float(projected[row * 2 * inner + inner + column]);
    store(out + i, h * 0.5f * g * (1.0f + erff(g * 0.70710678118654752f)));
}

// One entry point per kernel and dtype: <kernel>_<f32|f16>.
#define GROUP_NORM(NAME, T)                                                                            \
    extern "C" __global__ void __launch_bounds__(THREADS)                                              \
    NAME(const T* x, const T* gamma, const T* beta, T* out, int channels, int groups, int pixels,        \
         float eps) {                                                                                  \
        group_norm<T>(x, gamma, beta, out, channels, groups, pixels, eps);                             \
    }
#define LAYER_NORM(NAME, T)                                                                            \
    extern "C" __global__ void __launch_bounds__(THREADS)                                              \
    NAME(const T* x, const T* gamma, const T* beta, T* out, long rows, int features, float eps) {         \
        layer_norm<T>(x, gamma, beta, out, rows, features, eps);                                       \
    }
#define SILU(NAME, T)                                                                                  \
    extern "C" __global__ void __launch_bounds__(THREADS)                                              \
    NAME(const T* x, T* out, long count, float alpha) { silu<T>(x, out, count, alpha); }
#define GEGLU(NAME, T)                                                                                 \
    extern "C" __global__ void __launch_bounds__(THREADS)                                              \
    NAME(const T* projected, T* out, long count, int inner) { geglu<T>(projected, out, count, inner); }

GROUP_NORM(group_norm_f32, float)
GROUP_NORM(group_norm_f16, half_bits)
GEGLU(geglu_f32, float)
GEGLU(geglu_f16, half_bits)
LAYER_NORM(layer_norm_f32, float)
LAYER_NORM(layer_norm_f16, half_bits)
SILU(silu_f32, float)
SILU(silu_f16, half_bits)
