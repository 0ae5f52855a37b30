"""A 3×3 convolution with 4× fewer multiplications: Winograd's F(4×4, 3×3).

`nn.conv2d` computes every output pixel as 9 taps × C input channels of multiply-adds. Winograd's
minimal filtering algorithm (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
2015) computes a 4×4 tile of output pixels from the 6×6 input patch around it:

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A       d: a 6×6 input patch, g: a 3×3 kernel, ⊙: elementwise

Summed over input channels, the elementwise product at each of the 36 positions of the 6×6
array is a matrix product, U (C_out, C) @ V (C, tiles): 36 products per 16 output pixels where
direct convolution needs 144 (9 taps × 16 pixels). Each transform is one matrix product too:
flattened, Bᵀ d B is (Bᵀ ⊗ Bᵀ) d, with ⊗ the Kronecker product, so every patch of a strip of
the image is transformed by one (36 × 36) @ (36 × C·tiles) product.

minisd's Conv2d layers use it on the CPU for 3×3, stride-1, padding-1 convolutions over large
feature maps (where the products dominate); the result equals direct convolution up to float32
rounding (tested against PyTorch). `nn.conv2d` stays the definition.
"""

from .backend import array_module

# The matrices come from the Toom-Cook construction: the product of two polynomials is
# evaluated at the points 0, 1, -1, 2, -1/2 and ∞ (Bᵀ, G), multiplied pointwise, and
# interpolated back (Aᵀ). Lavin & Gray use ±2 where we use 2 and -1/2: their float32 error is
# about 1.5× larger (measured on SD's layers against float64).
PATCH_TRANSFORM = (  # Bᵀ: the 6 pixels of a patch row (or column) -> 6 values
    (1.0, 1.5, -2.0, -1.5, 1.0, 0.0),
    (0.0, -1.0, -2.5, -0.5, 1.0, 0.0),
    (0.0, 1.0, 0.5, -2.5, 1.0, 0.0),
    (0.0, -0.5, -1.0, 0.5, 1.0, 0.0),
    (0.0, 2.0, -1.0, -2.0, 1.0, 0.0),
    (0.0, 1.0, 1.5, -2.0, -1.5, 1.0),
)
KERNEL_TRANSFORM = (  # G: the 3 taps of a kernel row (or column) -> 6 values
    (1.0, 0.0, 0.0),
    (-1 / 3, -1 / 3, -1 / 3),
    (1 / 3, -1 / 3, 1 / 3),
    (1 / 15, 2 / 15, 4 / 15),
    (-16 / 15, 8 / 15, -4 / 15),
    (0.0, 0.0, 1.0),
)
OUTPUT_TRANSFORM = (  # Aᵀ: 6 products -> the 4 output pixels of a tile row (or column)
    (1.0, 1.0, 1.0, 1.0, 1.0, 0.0),
    (0.0, 1.0, -1.0, 2.0, -0.5, 0.0),
    (0.0, 1.0, 1.0, 4.0, 0.25, 0.0),
    (0.0, 1.0, -1.0, 8.0, -0.125, 1.0),
)
TILE = 4  # output pixels per tile side
PATCH = TILE + 2  # input pixels per patch side (a 3×3 kernel reaches one pixel further each way)

# Winograd-domain input of one strip of tiles: 4 Mi floats = 16 MB in float32.
STRIP_ELEMENTS = 4 * 2**20


def conv3x3(x, u, bias):
    """3×3 convolution, stride 1, padding 1: (B, C, H, W) -> (B, C_out, H, W), given the kernels
    transformed by `transform_kernels`: u (36, C_out, C)."""
    xp = array_module(x)
    batch, channels, height, width = x.shape
    tiles_h, tiles_w = -(-height // TILE), -(-width // TILE)  # 4×4 output pixels per tile
    padded = xp.zeros((batch, channels, TILE * tiles_h + 2, TILE * tiles_w + 2), x.dtype)
    padded[:, :, 1 : height + 1, 1 : width + 1] = x  # padding 1, plus rows/columns up to whole tiles
    y = xp.empty((batch, u.shape[1], TILE * tiles_h, TILE * tiles_w), x.dtype)
    for images, top, rows in strips(batch, tiles_h, PATCH**2 * channels * tiles_w):
        v = transform_patches(padded[images, :, TILE * top : TILE * (top + rows) + 2], rows, tiles_w)  # (36, C, tiles)
        m = u @ v  # (36, C_out, tiles): 36 matrix products
        write_outputs(m, y[images, :, TILE * top : TILE * (top + rows)], rows, tiles_w)
    y = y[:, :, :height, :width]
    y += bias[:, None, None]
    return y


def strips(batch, tiles_h, row_elements):
    """(images, first tile row, tile rows) of each strip of work, whose Winograd-domain input
    (`row_elements` per tile row) stays under STRIP_ELEMENTS: several whole images where they
    fit (a small feature map's products then get the tiles of every image: wider products run
    faster), else a few tile rows of one image."""
    rows = max(1, STRIP_ELEMENTS // row_elements)
    if rows >= tiles_h:
        count = rows // tiles_h
        return [(slice(first, first + count), 0, tiles_h) for first in range(0, batch, count)]
    return [(slice(b, b + 1), top, min(rows, tiles_h - top)) for b in range(batch) for top in range(0, tiles_h, rows)]


def transform_kernels(weight):
    """U = G g Gᵀ for every kernel g: (C_out, C, 3, 3) -> (36, C_out, C), one product of G ⊗ G
    (36 × 9) with every kernel flattened to its 9 taps."""
    out_channels, channels = weight.shape[:2]
    u = kronecker_square(KERNEL_TRANSFORM, weight) @ weight.reshape(-1, 9).T  # (36, C_out·C)
    return u.reshape(PATCH**2, out_channels, channels)


def transform_patches(x, tiles_h, tiles_w):
    """V = Bᵀ d B for every 6×6 patch (stride 4) of x (n, C, 4·tiles_h + 2, 4·tiles_w + 2), n images:
    -> (36, C, n·tiles_h·tiles_w)."""
    xp = array_module(x)
    channels_first = x.transpose(1, 0, 2, 3)  # (C, n, rows, columns)
    patches = xp.stack([channels_first[..., i : i + TILE * tiles_h : TILE, j : j + TILE * tiles_w : TILE]
                        for i in range(PATCH) for j in range(PATCH)])  # (36, C, n, th, tw): pixel (i, j) of every patch  # fmt: skip
    v = kronecker_square(PATCH_TRANSFORM, x) @ patches.reshape(PATCH**2, -1)  # (36, C·n·th·tw)
    return v.reshape(PATCH**2, x.shape[1], -1)


def write_outputs(m, y, tiles_h, tiles_w):
    """Y = Aᵀ M A: products m (36, C_out, n·tiles) -> 4×4 pixels per tile into y (n, C_out, 4·tiles_h, 4·tiles_w)."""
    images, out_channels = y.shape[:2]
    pixels = kronecker_square(OUTPUT_TRANSFORM, m) @ m.reshape(PATCH**2, -1)  # (16, C_out·n·th·tw)
    pixels = pixels.reshape(TILE, TILE, out_channels, images, tiles_h, tiles_w)  # (p, q, C_out, n, th, tw)
    y[...] = pixels.transpose(3, 2, 4, 0, 5, 1).reshape(y.shape)  # pixel (4·ty + p, 4·tx + q)


def kronecker_square(matrix, like):
    """matrix ⊗ matrix, in the dtype and on the device of array `like`: applied to a flattened
    (rows × columns) block, it applies `matrix` to the rows and to the columns."""
    xp = array_module(like)
    matrix = xp.asarray(matrix, like.dtype)
    return xp.kron(matrix, matrix)
