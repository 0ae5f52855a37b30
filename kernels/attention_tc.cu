// Fused multi-head attention on tensor cores, float16: out = softmax(Q Kᵀ · scale + mask) V.
//
// The same math and online softmax as kernels/attention.cu (read that one first), but the two
// products, S = Q Kᵀ and O = P V, run as mma_16x8x16 (common.cuh): 16 × 8 × 16 products that a
// warp computes in one instruction on the tensor cores, fp16 inputs, fp32 sums.
//
// Tiling: grid = (ceil(Tq / 64), B·H); a block of 4 warps handles 64 queries of one (batch,
// head), 16 per warp (the mma's 16 rows). Each step the block copies 64 keys and values into
// shared memory; every warp then
//   1. scores its 16 queries against the 64 keys: S (16 × 64) = Q (16 × D) Kᵀ, as 8 column tiles
//      of 8 keys, each a sum of D/16 mmas (D padded with zeros to a multiple of 16: 40 -> 48);
//   2. updates each row's running max m and sum l and rescales its output O (16 × D), in
//      registers: a row's 64 scores are spread over the 4 lanes of a quad (lanes 4g..4g+3 hold
//      rows g and g+8), so a row's max and sum take two shuffles;
//   3. adds P V: P = exp(S - m) rounded to fp16. The mma's output fragment of S is, two column
//      tiles side by side, exactly its input fragment for P, so P never leaves the registers.
//      O's D columns are D/8 tiles, each a sum of 4 mmas (64 keys, 16 at a time).
// Scores are kept in base 2 (scale and mask times log2 e, then exp2), one multiply fewer per score.
//
// Shared memory holds two fp16 values per 32-bit word, the pairs the mma takes: keys row by row
// (key, pair of head-dim columns) and values transposed (head-dim column, pair of keys), each row
// padded by 4 words so that the 32 lanes reading a fragment hit 32 different banks.
//
// Layout and mask as kernels/attention.cu: q (B, Tq, H, D), k and v (B, Tk, H, D), out like q;
// mask float32 (Tq, Tk), read when has_mask is 1. q, k, v and out are read and written two fp16
// at a time, so they must start on a 4-byte boundary (every CuPy allocation does).
// Shapes covered: head dims 40, 64, 80, 160, any token counts; float16 only, on Ampere (sm_80)
// and later. minisd/cuda.py sends float32, and float16 on older GPUs, to kernels/attention.cu.

#define TC_WARPS 4
#define ROWS 16  // queries per warp: the mma's M
#define KEYS 64  // keys per shared-memory tile
#define PAD 4    // words added to each shared-memory row against bank conflicts
#define LOG2_E 1.4426950408889634f
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ unsigned load_pair(const half_bits* p) { return *(const unsigned*)p; }

// The max (sum) of x over the 4 lanes of a quad: the lanes that share a row of an mma fragment.
__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffff, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffff, x, 1);
    return x + __shfl_xor_sync(0xffffffff, x, 2);
}

template <int D>
__device__ void attention_tc(const half_bits* __restrict__ q, const half_bits* __restrict__ k,
                             const half_bits* __restrict__ v, const float* __restrict__ mask, int has_mask,
                             half_bits* __restrict__ out, int heads, int q_len, int k_len, float scale) {
    constexpr int DK = (D + 15) / 16 * 16;  // head dim padded to the mma's K
    constexpr int KEY_WORDS = DK / 2 + PAD;
    constexpr int VALUE_WORDS = KEYS / 2 + PAD;
    __shared__ unsigned key_pairs[KEYS][KEY_WORDS];     // [key][pair of dims]
    __shared__ unsigned value_pairs[D][VALUE_WORDS];    // [dim][pair of keys]: Vᵀ
    half_bits* value_halves = (half_bits*)value_pairs;  // the same, one fp16 at a time

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int group = lane / 4, pair = lane % 4;  // fragment coordinates (common.cuh)
    const int batch = blockIdx.y / heads, head = blockIdx.y % heads;
    const int first_row = (blockIdx.x * TC_WARPS + warp) * ROWS;
    const int rows[2] = {first_row + group, first_row + group + 8};  // this lane's two query rows
    const long row_stride = (long)heads * D;  // from token t to token t+1
    const half_bits* k_base = k + (long)batch * k_len * row_stride + head * D;
    const half_bits* v_base = v + (long)batch * k_len * row_stride + head * D;
    const float score_scale = scale * LOG2_E;

    // Q as mma input fragments, DK/16 of them along the head dim; zero outside Q.
    unsigned q_frag[DK / 16][4];
#pragma unroll
    for (int step = 0; step < DK / 16; ++step)
        for (int r = 0; r < 4; ++r) {
            const int row = rows[r % 2], column = 16 * step + 2 * pair + 8 * (r / 2);
            const half_bits* at = q + ((long)batch * q_len + row) * row_stride + head * D + column;
            q_frag[step][r] = row < q_len && column < D ? load_pair(at) : 0u;
        }
    float o[D / 8][4];  // O's fragments: rows (group, group + 8), columns 8·tile + 2·pair, +1
    for (int tile = 0; tile < D / 8; ++tile)
        for (int i = 0; i < 4; ++i) o[tile][i] = 0.0f;
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f};  // per row; l summed over the quad at the end

    for (int start = 0; start < k_len; start += KEYS) {
        __syncthreads();  // the previous tile is no longer read
        for (int idx = threadIdx.x; idx < KEYS * (DK / 2); idx += TC_WARPS * 32) {
            const int j = idx / (DK / 2), column = 2 * (idx % (DK / 2));
            const bool inside = start + j < k_len && column < D;
            key_pairs[j][column / 2] = inside ? load_pair(k_base + (start + j) * row_stride + column) : 0u;
        }
        for (int idx = threadIdx.x; idx < KEYS * (D / 2); idx += TC_WARPS * 32) {
            const int j = idx / (D / 2), column = 2 * (idx % (D / 2));
            const bool inside = start + j < k_len;
            const unsigned both = inside ? load_pair(v_base + (start + j) * row_stride + column) : 0u;
            value_halves[column * 2 * VALUE_WORDS + j] = (half_bits)(both & 0xffff);
            value_halves[(column + 1) * 2 * VALUE_WORDS + j] = (half_bits)(both >> 16);
        }
        __syncthreads();

        // 1. S = Q Kᵀ, 8 tiles of 16 queries × 8 keys
        float s[KEYS / 8][4];
#pragma unroll
        for (int tile = 0; tile < KEYS / 8; ++tile) {
            for (int i = 0; i < 4; ++i) s[tile][i] = 0.0f;
            for (int step = 0; step < DK / 16; ++step) {
                const unsigned b[2] = {key_pairs[8 * tile + group][8 * step + pair],
                                       key_pairs[8 * tile + group][8 * step + 4 + pair]};
                mma_16x8x16(s[tile], q_frag[step], b);
            }
        }
        // 2. scale, mask, the tile's row maxima, then rescale what was accumulated
        float tile_max[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int tile = 0; tile < KEYS / 8; ++tile)
            for (int i = 0; i < 4; ++i) {
                const int key = start + 8 * tile + 2 * pair + i % 2, row = rows[i / 2];
                float score = s[tile][i] * score_scale;
                if (has_mask && key < k_len && row < q_len) score += mask[(long)row * k_len + key] * LOG2_E;
                s[tile][i] = key < k_len ? score : NEG_INF;
                tile_max[i / 2] = fmaxf(tile_max[i / 2], s[tile][i]);
            }
        float shift[2];  // the max each row's exponent is taken from
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const float m_new = fmaxf(m[r], quad_max(tile_max[r]));
            shift[r] = m_new == NEG_INF ? 0.0f : m_new;  // a row with every key masked so far
            const float correction = exp2f(m[r] - shift[r]);
            l[r] *= correction;
            for (int tile = 0; tile < D / 8; ++tile) {
                o[tile][2 * r] *= correction;
                o[tile][2 * r + 1] *= correction;
            }
            m[r] = m_new;
        }
        // 3. O += P V, 16 keys at a time: S's tiles 2·step and 2·step + 1 make one P fragment
#pragma unroll
        for (int step = 0; step < KEYS / 16; ++step) {
            float p[2][4];
            for (int side = 0; side < 2; ++side)
                for (int i = 0; i < 4; ++i) {
                    p[side][i] = exp2f(s[2 * step + side][i] - shift[i / 2]);
                    l[i / 2] += p[side][i];
                }
            const unsigned p_frag[4] = {pack_halves(p[0][0], p[0][1]), pack_halves(p[0][2], p[0][3]),
                                        pack_halves(p[1][0], p[1][1]), pack_halves(p[1][2], p[1][3])};
            for (int tile = 0; tile < D / 8; ++tile) {
                const unsigned b[2] = {value_pairs[8 * tile + group][8 * step + pair],
                                       value_pairs[8 * tile + group][8 * step + 4 + pair]};
                mma_16x8x16(o[tile], p_frag, b);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const float total = quad_sum(l[r]);
        const float inv_l = total > 0.0f ? 1.0f / total : 0.0f;
        if (rows[r] >= q_len) continue;
        half_bits* out_row = out + ((long)batch * q_len + rows[r]) * row_stride + head * D;
        for (int tile = 0; tile < D / 8; ++tile)
            *(unsigned*)(out_row + 8 * tile + 2 * pair) =
                pack_halves(o[tile][2 * r] * inv_l, o[tile][2 * r + 1] * inv_l);
    }
}

// One entry point per head dim: attention_tc_d<D>. The launch bounds' second number (at least 2
// blocks per SM) changes nothing a launch can do; it makes ptxas keep d64's registers unspilled.
#define ENTRY(NAME, D)                                                                               \
    extern "C" __global__ void __launch_bounds__(TC_WARPS * 32, 2)                                      \
    NAME(const half_bits* q, const half_bits* k, const half_bits* v, const float* mask, int has_mask, \
         half_bits* out, int heads, int q_len, int k_len, float scale) {                             \
        attention_tc<D>(q, k, v, mask, has_mask, out, heads, q_len, k_len, scale);                   \
    }

ENTRY(attention_tc_d40, 40)
ENTRY(attention_tc_d64, 64)
ENTRY(attention_tc_d80, 80)
ENTRY(attention_tc_d160, 160)
