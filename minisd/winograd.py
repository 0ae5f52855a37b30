"""A 3×3 convolution with 2.25× fewer multiplications: Winograd's F(2×2, 3×3).

`nn.conv2d` computes every output pixel as 9 taps × C input channels of multiply-adds. Winograd's
minimal filtering algorithm (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
2015) computes a 2×2 block of output pixels from the 4×4 input patch around it:

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d Bᵀᵀ) ] A       d: a 4×4 input patch, g: a 3×3 kernel, ⊙: elementwise

Each matrix applies one small 1-D transform (below) to the rows, then to the columns. Summed
over input channels, the elementwise product at each of the 16 positions (ξ, ν) of the 4×4 array
is a matrix product, U[ξ,ν] (C_out, C) @ V[ξ,ν] (C, tiles): 16 products per 4 output pixels
where direct convolution needs 36 (9 taps × 4 pixels). The transforms only add and halve.

minisd's Conv2d layers use it on the CPU for 3×3, stride-1, padding-1 convolutions over large
feature maps (where the products dominate), with each layer's kernels transformed once; the
result equals direct convolution up to float32 rounding (tested against PyTorch). `nn.conv2d`
stays the definition.
"""

from .backend import array_module
from .parallel import in_blocks


def patch_transform(d, out):
    """Bᵀ applied to 4 rows (or columns) d0..d3 of input patches, written into out[0..3]."""
    xp = array_module(out)
    xp.subtract(d[0], d[2], out=out[0])
    xp.add(d[1], d[2], out=out[1])
    xp.subtract(d[2], d[1], out=out[2])
    xp.subtract(d[1], d[3], out=out[3])


def kernel_transform(g):
    """G applied to 3 rows (or columns) g0..g2 of kernels: 4 rows out."""
    return [g[0], (g[0] + g[1] + g[2]) * 0.5, (g[0] - g[1] + g[2]) * 0.5, g[2]]


def output_transform(m):
    """Aᵀ applied to 4 rows (or columns) m0..m3 of products: the 2 output rows."""
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


# Winograd-domain input of one strip of tiles: 4 Mi floats = 16 MB in float32.
STRIP_ELEMENTS = 4 * 2**20


def conv3x3(x, u, bias):
    """3×3 convolution, stride 1, padding 1: (B, C, H, W) -> (B, C_out, H, W), given the kernels
    transformed by `transform_kernels`: u (4, 4, C_out, C)."""
    xp = array_module(x)
    batch, channels, height, width = x.shape
    out_channels = u.shape[2]
    tiles_h, tiles_w = (height + 1) // 2, (width + 1) // 2  # 2×2 output pixels per tile
    padded = xp.zeros((batch, channels, 2 * tiles_h + 2, 2 * tiles_w + 2), x.dtype)
    padded[:, :, 1 : height + 1, 1 : width + 1] = x  # padding 1, plus a row/column for odd sizes
    y = xp.empty((batch, out_channels, 2 * tiles_h, 2 * tiles_w), x.dtype)
    strip = max(1, STRIP_ELEMENTS // (16 * channels * tiles_w))  # tile rows per strip
    for b in range(batch):
        for top in range(0, tiles_h, strip):
            rows = min(strip, tiles_h - top)
            v = transform_patches(padded[b, :, 2 * top : 2 * (top + rows) + 2], rows, tiles_w)  # (4, 4, C, tiles)
            m = u @ v  # (4, 4, C_out, tiles): 16 matrix products
            write_outputs(m, y[b, :, 2 * top : 2 * (top + rows)], rows, tiles_w)
    y = y[:, :, :height, :width]
    y += bias[:, None, None]
    return y


def transform_kernels(weight):
    """U = G g Gᵀ for every kernel: (C_out, C, 3, 3) -> (4, 4, C_out, C), a few output channels
    at a time, on every core."""
    xp = array_module(weight)
    out_channels, channels = weight.shape[:2]
    u = xp.empty((4, 4, out_channels, channels), weight.dtype)

    def transform(items):
        kernel_rows = kernel_transform([weight[items, :, i, :] for i in range(3)])  # 4 × (n, C, 3)
        for xi, row in enumerate(kernel_rows):
            for nu, value in enumerate(kernel_transform([row[:, :, j] for j in range(3)])):
                u[xi, nu, items] = value

    in_blocks(transform, out_channels, 16 * channels, weight)
    return u


def transform_patches(x, tiles_h, tiles_w):
    """V = Bᵀ d B for every 4×4 patch (stride 2) of x (C, 2·tiles_h + 2, 2·tiles_w + 2):
    -> (4, 4, C, tiles_h·tiles_w). Channels are independent: a few at a time, on every core."""
    xp = array_module(x)
    channels = x.shape[0]
    v = xp.empty((4, 4, channels, tiles_h * tiles_w), x.dtype)

    def transform(items):
        count = items.stop - items.start
        patch_rows = [x[items, i : i + 2 * tiles_h : 2] for i in range(4)]  # row i of every patch
        rows = xp.empty((4, *patch_rows[0].shape), x.dtype)  # (4, count, tiles_h, 2·tiles_w + 2)
        patch_transform(patch_rows, rows)
        for xi, row in enumerate(rows):
            patch_cols = [row[:, :, j : j + 2 * tiles_w : 2] for j in range(4)]  # column j of every patch
            patch_transform(patch_cols, v[xi, :, items].reshape(4, count, tiles_h, tiles_w))

    in_blocks(transform, channels, 16 * tiles_h * tiles_w, x)
    return v


def write_outputs(m, y, tiles_h, tiles_w):
    """Y = Aᵀ M A: products m (4, 4, C_out, tiles) -> 2×2 pixels per tile into y (C_out, 2·tiles_h, 2·tiles_w)."""
    m = m.reshape(4, 4, m.shape[2], tiles_h, tiles_w)

    def transform(items):
        for p, row in enumerate(output_transform([m[xi, :, items] for xi in range(4)])):  # 4 × (C_out, th, tw)
            for q, value in enumerate(output_transform([row[nu] for nu in range(4)])):
                y[items, p::2, q::2] = value

    in_blocks(transform, m.shape[2], 16 * tiles_h * tiles_w, m)
