// Fused multi-head attention: out = softmax(Q Kᵀ · scale + mask) V, one pass, flash-style.
//
// The math: for one query q (a row of Q) and keys k_1..k_n, with s_j = q·k_j · scale + mask_j,
//     out = Σ_j exp(s_j - m) v_j / Σ_j exp(s_j - m),   m = max_j s_j.
// Keys arrive in tiles of 32. An *online softmax* keeps, per query, the running max m, the
// running denominator l and the running weighted sum acc; when a tile raises the max from m to
// m', everything accumulated so far is rescaled by exp(m - m'). So the N × N score matrix is
// never stored: each score lives in one register for one tile.
//
// Layout: q (B, Tq, H, D), k and v (B, Tk, H, D), out (B, Tq, H, D): exactly the
// (batch, tokens, heads·dim) arrays of minisd/nn.py, so no transposes are needed.
// mask: additive float32 (Tq, Tk), read only when has_mask is 1, shared by every batch item and
// head (CLIP's causal mask); -inf where a query may not look. Each row must keep one key.
//
// Tiling: grid = (ceil(Tq / WARPS), B·H); a block of WARPS warps handles WARPS queries of one
// (batch, head), one query per warp. Each step the block loads 32 keys and 32 values into
// shared memory (as float); lane j of a warp scores key j against its query, the warp reduces
// max and sum with shuffles, then every lane accumulates the D/32 output elements it owns.
// Accumulation is float32 for float and half inputs alike.
//
// Shapes covered: head dims 40, 64, 80, 160 (SD 1.x: 40/80/160, SD 2.x and CLIP: 64), any token
// counts (4096+ self-attention, 77-key cross-attention). minisd/cuda.py falls back to plain
// CuPy for anything else, and sends float16 on Ampere and later GPUs to kernels/attention_tc.cu
// (the same math on tensor cores); this kernel serves float32 and float16 on older GPUs.

#define WARPS 4
#define TILE 32

#define NEG_INF __int_as_float(0xff800000)  // -inf, without math.h

template <typename T, int D>
__device__ void attention(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                          const float* __restrict__ mask, int has_mask, T* __restrict__ out,
                          int heads, int q_len, int k_len, float scale) {
    constexpr int PER_LANE = (D + 31) / 32;  // output elements each lane owns: lane, lane+32, ...
    __shared__ float keys[TILE][D + 1];      // +1: lanes reading different keys hit different banks
    __shared__ float values[TILE][D];
    __shared__ float query[WARPS][D];
    __shared__ float probs[WARPS][TILE];

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int batch = blockIdx.y / heads, head = blockIdx.y % heads;
    const int row = blockIdx.x * WARPS + warp;  // this warp's query index
    const bool active = row < q_len;
    const long row_stride = (long)heads * D;    // from token t to token t+1
    const T* k_base = k + (long)batch * k_len * row_stride + head * D;
    const T* v_base = v + (long)batch * k_len * row_stride + head * D;

    if (active) {
        const T* q_row = q + ((long)batch * q_len + row) * row_stride + head * D;
        for (int e = lane; e < D; e += 32) query[warp][e] = to_float(q_row[e]) * scale;
    }
    float m = NEG_INF, l = 0.0f, acc[PER_LANE];
    for (int i = 0; i < PER_LANE; ++i) acc[i] = 0.0f;

    for (int start = 0; start < k_len; start += TILE) {
        __syncthreads();  // the previous tile is no longer read
        for (int idx = threadIdx.x; idx < TILE * D; idx += WARPS * 32) {
            int j = idx / D, e = idx % D;
            bool inside = start + j < k_len;
            keys[j][e] = inside ? to_float(k_base[(start + j) * row_stride + e]) : 0.0f;
            values[j][e] = inside ? to_float(v_base[(start + j) * row_stride + e]) : 0.0f;
        }
        __syncthreads();
        if (!active) continue;

        // lane j: score of key start + j
        const int key = start + lane;
        float s = 0.0f;
        for (int e = 0; e < D; ++e) s += query[warp][e] * keys[lane][e];
        if (has_mask && key < k_len) s += mask[(long)row * k_len + key];
        if (key >= k_len) s = NEG_INF;

        // online softmax: new max, rescale what was accumulated, add this tile
        const float m_new = fmaxf(m, warp_max(s));
        const float m_safe = m_new == NEG_INF ? 0.0f : m_new;  // a fully masked tile so far
        const float correction = expf(m - m_safe);
        const float p = expf(s - m_safe);
        l = l * correction + warp_sum(p);
        m = m_new;
        probs[warp][lane] = p;
        __syncwarp();
        for (int i = 0; i < PER_LANE; ++i) {
            const int e = lane + 32 * i;
            if (e < D) {
                float sum = acc[i] * correction;
                for (int j = 0; j < TILE; ++j) sum += probs[warp][j] * values[j][e];
                acc[i] = sum;
            }
        }
        __syncwarp();  // probs is rewritten by the next tile
    }
    if (active) {
        T* out_row = out + ((long)batch * q_len + row) * row_stride + head * D;
        const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;
        for (int i = 0; i < PER_LANE; ++i) {
            const int e = lane + 32 * i;
            if (e < D) store(out_row + e, acc[i] * inv_l);
        }
    }
}

// One entry point per (dtype, head dim): attention_<f32|f16>_d<D>.
#define ENTRY(NAME, T, D)                                                                            \
    extern "C" __global__ void __launch_bounds__(WARPS * 32)                                         \
    NAME(const T* q, const T* k, const T* v, const float* mask, int has_mask, T* out, int heads,     \
         int q_len, int k_len, float scale) {                                                        \
        attention<T, D>(q, k, v, mask, has_mask, out, heads, q_len, k_len, scale);                   \
    }

ENTRY(attention_f32_d40, float, 40)
ENTRY(attention_f32_d64, float, 64)
ENTRY(attention_f32_d80, float, 80)
ENTRY(attention_f32_d160, float, 160)
ENTRY(attention_f16_d40, half_bits, 40)
ENTRY(attention_f16_d64, half_bits, 64)
ENTRY(attention_f16_d80, half_bits, 80)
ENTRY(attention_f16_d160, half_bits, 160)
