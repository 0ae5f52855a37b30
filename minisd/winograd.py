"""A 3×3 convolution with up to 4× fewer multiplications: Winograd's F(m×m, 3×3).

`nn.conv2d` computes every output pixel as 9 taps × C input channels of multiply-adds. Winograd's
minimal filtering algorithm (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
2015) computes an m×m tile of output pixels from the (m+2)×(m+2) input patch around it:

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A       d: an input patch, g: a 3×3 kernel, ⊙: elementwise

Summed over input channels, the elementwise product at each of the (m+2)² positions of the
patch is a matrix product, U (C_out, C) @ V (C, tiles): for F(4×4, 3×3), 36 products per 16 output
pixels where direct convolution needs 144 (9 taps × 16 pixels); for F(2×2, 3×3), 16 per 4 (36).
Each transform is one matrix product too: flattened, Bᵀ d B is (Bᵀ ⊗ Bᵀ) d, with ⊗ the Kronecker
product, so every patch of a strip of the image is transformed by one product.

minisd's Conv2d layers use it on the CPU for 3×3, stride-1, padding-1 convolutions over large
feature maps (where the products dominate); the result equals direct convolution up to float32
rounding (tested against PyTorch). `nn.conv2d` stays the definition.
"""

from dataclasses import dataclass

from .backend import array_module


@dataclass(frozen=True)
class Algorithm:
    """F(tile×tile, 3×3): its three transforms, each acting on the rows, then on the columns."""

    tile: int  # output pixels per tile side
    patch_transform: tuple  # Bᵀ: the pixels of a patch row (or column) -> patch values
    kernel_transform: tuple  # G: the 3 taps of a kernel row (or column) -> patch values
    output_transform: tuple  # Aᵀ: patch values (the products) -> the tile's output pixels

    @property
    def patch(self):
        """Input pixels per patch side: a 3×3 kernel reaches one pixel further each way."""
        return self.tile + 2


# The matrices come from the Toom-Cook construction: the product of two polynomials is
# evaluated at a few points and ∞ (Bᵀ, G), multiplied pointwise, and interpolated back (Aᵀ).
F2 = Algorithm(  # points 0, 1, -1
    tile=2,
    patch_transform=((1.0, 0.0, -1.0, 0.0), (0.0, 1.0, 1.0, 0.0), (0.0, -1.0, 1.0, 0.0), (0.0, 1.0, 0.0, -1.0)),
    kernel_transform=((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0)),
    output_transform=((1.0, 1.0, 1.0, 0.0), (0.0, 1.0, -1.0, -1.0)),
)
F4 = Algorithm(  # points 0, 1, -1, 2, -1/2: Lavin & Gray's ±2 give a float32 error 1.5× larger
    tile=4,
    patch_transform=(
        (1.0, 1.5, -2.0, -1.5, 1.0, 0.0),
        (0.0, -1.0, -2.5, -0.5, 1.0, 0.0),
        (0.0, 1.0, 0.5, -2.5, 1.0, 0.0),
        (0.0, -0.5, -1.0, 0.5, 1.0, 0.0),
        (0.0, 2.0, -1.0, -2.0, 1.0, 0.0),
        (0.0, 1.0, 1.5, -2.0, -1.5, 1.0),
    ),
    kernel_transform=(
        (1.0, 0.0, 0.0),
        (-1 / 3, -1 / 3, -1 / 3),
        (1 / 3, -1 / 3, 1 / 3),
        (1 / 15, 2 / 15, 4 / 15),
        (-16 / 15, 8 / 15, -4 / 15),
        (0.0, 0.0, 1.0),
    ),
    output_transform=(
        (1.0, 1.0, 1.0, 1.0, 1.0, 0.0),
        (0.0, 1.0, -1.0, 2.0, -0.5, 0.0),
        (0.0, 1.0, 1.0, 4.0, 0.25, 0.0),
        (0.0, 1.0, -1.0, 8.0, -0.125, 1.0),
    ),
)

# Winograd-domain input of one strip of tiles: 4 Mi floats = 16 MB in float32.
STRIP_ELEMENTS = 4 * 2**20


def conv3x3(x, u, bias, algorithm):
    """3×3 convolution, stride 1, padding 1: (B, C, H, W) -> (B, C_out, H, W), given the kernels
    transformed by `transform_kernels`: u (patch², C_out, C)."""
    xp = array_module(x)
    batch, channels, height, width = x.shape
    tile = algorithm.tile
    tiles_h, tiles_w = -(-height // tile), -(-width // tile)  # tile×tile output pixels per tile
    padded = xp.zeros((batch, channels, tile * tiles_h + 2, tile * tiles_w + 2), x.dtype)
    padded[:, :, 1 : height + 1, 1 : width + 1] = x  # padding 1, plus rows/columns up to whole tiles
    y = xp.empty((batch, u.shape[1], tile * tiles_h, tile * tiles_w), x.dtype)
    for images, top, rows in strips(batch, tiles_h, algorithm.patch**2 * channels * tiles_w):
        window = padded[images, :, tile * top : tile * (top + rows) + 2]
        v = transform_patches(window, rows, tiles_w, algorithm)  # (patch², C, tiles)
        m = u @ v  # (patch², C_out, tiles): one matrix product per patch position
        write_outputs(m, y[images, :, tile * top : tile * (top + rows)], rows, tiles_w, algorithm)
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


def transform_kernels(weight, algorithm):
    """U = G g Gᵀ for every kernel g: (C_out, C, 3, 3) -> (patch², C_out, C), one product of G ⊗ G
    (patch² × 9) with every kernel flattened to its 9 taps."""
    out_channels, channels = weight.shape[:2]
    u = kronecker_square(algorithm.kernel_transform, weight) @ weight.reshape(-1, 9).T  # (patch², C_out·C)
    return u.reshape(algorithm.patch**2, out_channels, channels)


def transform_patches(x, tiles_h, tiles_w, algorithm):
    """V = Bᵀ d B for every patch (stride: the tile) of x (n, C, tile·tiles_h + 2, tile·tiles_w + 2),
    n images: -> (patch², C, n·tiles_h·tiles_w)."""
    xp = array_module(x)
    tile, patch = algorithm.tile, algorithm.patch
    channels_first = x.transpose(1, 0, 2, 3)  # (C, n, rows, columns)
    pixels = [
        channels_first[..., i : i + tile * tiles_h : tile, j : j + tile * tiles_w : tile]
        for i in range(patch)
        for j in range(patch)
    ]  # pixel (i, j) of every patch: (C, n, th, tw)
    patches = xp.stack(pixels)  # (patch², C, n, th, tw)
    v = kronecker_square(algorithm.patch_transform, x) @ patches.reshape(patch**2, -1)  # (patch², C·n·th·tw)
    return v.reshape(patch**2, x.shape[1], -1)


def write_outputs(m, y, tiles_h, tiles_w, algorithm):
    """Y = Aᵀ M A: products m (patch², C_out, n·tiles) -> tile×tile pixels per tile into
    y (n, C_out, tile·tiles_h, tile·tiles_w)."""
    images, out_channels = y.shape[:2]
    tile = algorithm.tile
    products = m.reshape(algorithm.patch**2, -1)  # (patch², C_out·n·th·tw)
    pixels = kronecker_square(algorithm.output_transform, m) @ products  # (tile², C_out·n·th·tw)
    pixels = pixels.reshape(tile, tile, out_channels, images, tiles_h, tiles_w)  # (p, q, C_out, n, th, tw)
    y[...] = pixels.transpose(3, 2, 4, 0, 5, 1).reshape(y.shape)  # pixel (tile·ty + p, tile·tx + q)


def kronecker_square(matrix, like):
    """matrix ⊗ matrix, in the dtype and on the device of array `like`: applied to a flattened
    (rows × columns) block, it applies `matrix` to the rows and to the columns."""
    xp = array_module(like)
    matrix = xp.asarray(matrix, like.dtype)
    return xp.kron(matrix, matrix)
