// im2col for a convolution, padding included: the columns nn.conv2d multiplies its kernel with,
// gathered in one pass where CuPy array code pads the input (a copy) and stacks kh·kw shifted
// views of it (another, larger one), about six kernel launches and an upload of pointers.
//
// The math (nn.im2col's layout): for x (B, C, H, W), a kh × kw window, a stride and a zero
// padding on every side, output pixel (b, oy, ox) sees the window at
//     (oy · stride − padding + i, ox · stride − padding + j),  0 ≤ i < kh, 0 ≤ j < kw,
// and columns (C · kh · kw, B · H' · W') holds it down column b · H'W' + oy · W' + ox, row
// c · kh · kw + i · kw + j; a place outside x reads 0.
//
// Tiling: one thread per element of columns, consecutive threads along a row of it (the same
// (c, i, j), consecutive output pixels), so writes are coalesced and reads nearly so.
//
// Shapes covered: any (float32 and float16).

#define THREADS 256

template <typename T>
__device__ void im2col(const T* __restrict__ x, T* __restrict__ columns, int batch, int channels, int height,
                       int width, int kh, int kw, int stride, int padding, int out_h, int out_w) {
    const long pixels = (long)batch * out_h * out_w;  // the length of a row of columns
    const long index = (long)blockIdx.x * THREADS + threadIdx.x;
    if (index >= (long)channels * kh * kw * pixels) return;
    const long row = index / pixels, p = index % pixels;
    const int c = (int)(row / (kh * kw)), i = (int)(row % (kh * kw)) / kw, j = (int)(row % kw);
    const int b = (int)(p / (out_h * out_w)), oy = (int)(p % (out_h * out_w)) / out_w, ox = (int)(p % out_w);
    const int in_y = oy * stride - padding + i, in_x = ox * stride - padding + j;  // where it reads x
    const bool inside = in_y >= 0 && in_y < height && in_x >= 0 && in_x < width;
    columns[index] = inside ? x[(((long)b * channels + c) * height + in_y) * width + in_x] : (T)0;
}

// One entry point per dtype: im2col_<f32|f16>.
#define IM2COL(NAME, T)                                                                                \
    extern "C" __global__ void __launch_bounds__(THREADS)                                              \
    NAME(const T* x, T* columns, int batch, int channels, int height, int width, int kh, int kw, int stride, \
         int padding, int out_h, int out_w) {                                                          \
        im2col<T>(x, columns, batch, channels, height, width, kh, kw, stride, padding, out_h, out_w);  \
    }

IM2COL(im2col_f32, float)
IM2COL(im2col_f16, half_bits)
