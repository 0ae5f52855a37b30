"""Random numbers as PyTorch draws them on the CPU: same seed, same noise, same picture as diffusers.

diffusers makes its starting latents with `torch.randn(shape, generator=g)`, where
`g = torch.Generator("cpu").manual_seed(seed)`, and draws every later noise (DDIM with eta > 0,
img2img) from the same g. TorchGenerator repeats PyTorch's steps in NumPy, bit for bit:

1. A Mersenne Twister (MT19937) seeded with the seed's low 32 bits (the textbook
   `init_genrand`, as torch seeds it) gives a stream of 32-bit integers.
2. Each integer becomes a float32 uniform in [0, 1): its low 24 bits times 2^-24.
3. The Box-Muller transform turns blocks of 16 uniforms into 16 normals: with u1 the first 8
   and u2 the next 8, r = sqrt(-2 log(1 - u1)) and theta = 2 pi u2 give r cos(theta) (first 8)
   and r sin(theta) (next 8). When the size is not a multiple of 16, torch draws 16 fresh
   uniforms and recomputes the last 16 values from them.

On x86-64 (AVX2 or AVX-512, what PyTorch's wheels run on Linux and Windows) torch computes log,
sin and cos with Cephes-style float32 polynomials whose multiply-adds the compiler fused; they
are repeated below, fused the same way, so the noise is bit-identical. (PyTorch on ARM uses the
C library's logf/sinf/cosf instead: there about 1 % of values differ in the last bit.)
Fewer than 16 values take torch's other path: float64 Box-Muller, one value at a time.
"""

import math

import numpy as np

STATE_SIZE = 624  # MT19937 keeps 624 32-bit words of state
f32 = np.float32


class TorchGenerator:
    """`torch.Generator("cpu").manual_seed(seed)` for normal noise, in NumPy.

    Has `standard_normal(shape, dtype)` like numpy.random.Generator, so the pipeline can use
    either; each call continues the stream, as successive torch.randn calls do.
    """

    def __init__(self, seed):
        if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        self.seed = int(seed)
        self.bits = np.random.MT19937()  # NumPy's MT19937 is the textbook one; we set its state
        self.bits.state = {"bit_generator": "MT19937", "state": {"key": init_genrand(self.seed), "pos": STATE_SIZE}}
        self.spare_normal = None  # the small-tensor path makes normals in pairs and keeps one

    def standard_normal(self, shape, dtype=np.float32):
        """torch.randn(shape, generator=g) as float32, continuing the stream."""
        if np.dtype(dtype) != np.float32:
            raise ValueError(f"TorchGenerator draws float32 noise, as diffusers' latents are; got dtype {dtype}")
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        n = math.prod(shape)
        normals = self._normal_blocks(n) if n >= 16 else self._normal_pairs(n)
        return normals.reshape(shape)

    def uniform_float32(self, n):
        """n float32 uniforms in [0, 1), each from the low 24 bits of one 32-bit draw."""
        words = self.bits.random_raw(n)  # (n,) uint64 holding 32-bit outputs
        return (words & 0xFFFFFF).astype(f32) * f32(2.0**-24)

    def uniform_float64(self):
        """One float64 uniform in [0, 1) from 53 bits of two 32-bit draws (first = high word)."""
        high, low = (int(w) for w in self.bits.random_raw(2))
        return (((high << 32) | low) & (2**53 - 1)) * 2.0**-53

    def _normal_blocks(self, n):
        """torch's path for 16 or more values: all uniforms first, then Box-Muller per 16."""
        normals = box_muller(self.uniform_float32(n)[: n - n % 16])
        if n % 16:  # the last 16 values are recomputed from 16 fresh uniforms
            normals = np.concatenate([normals[: n - 16], box_muller(self.uniform_float32(16))])
        return normals

    def _normal_pairs(self, n):
        """torch's path for fewer than 16 values: float64 Box-Muller, the sine half kept for later."""
        normals = []
        for _ in range(n):
            if self.spare_normal is not None:
                normals.append(self.spare_normal)
                self.spare_normal = None
                continue
            u1, u2 = self.uniform_float64(), self.uniform_float64()
            radius = math.sqrt(-2.0 * math.log1p(-u2))
            theta = 2.0 * math.pi * u1
            self.spare_normal = radius * math.sin(theta)
            normals.append(radius * math.cos(theta))
        return np.array(normals, dtype=f32)


def init_genrand(seed):
    """The 624-word MT19937 state for a seed (Matsumoto & Nishimura's init_genrand, low 32 bits)."""
    key = [seed & 0xFFFFFFFF]
    for i in range(1, STATE_SIZE):
        previous = key[-1]
        key.append((1812433253 * (previous ^ (previous >> 30)) + i) & 0xFFFFFFFF)
    return np.array(key, dtype=np.uint32)


def box_muller(uniforms):
    """(16k,) float32 uniforms -> (16k,) float32 normals, block by block of 16 as torch does."""
    u1, u2 = uniforms.reshape(-1, 2, 8).transpose(1, 0, 2)  # each (k, 8)
    radius = np.sqrt(f32(-2) * cephes_log(1 - u1))  # 1 - u1 lies in (0, 1]
    sin, cos = cephes_sincos(f32(2 * np.pi) * u2)
    return np.concatenate([radius * cos, radius * sin], axis=1).ravel()  # (k, 16) -> (16k,)


# ------------------------------------------------------------------------------------------
# float32 log, sin and cos as torch's x86 kernel computes them (Cephes polynomials by Stephen
# Moshier, vectorised by Julien Pommier's avx_mathfun); fma marks each multiply-add that the
# compiler fused into one rounding.

LOG_POLYNOMIAL = (
    7.0376836292e-2,
    -1.1514610310e-1,
    1.1676998740e-1,
    -1.2420140846e-1,
    1.4249322787e-1,
    -1.6668057665e-1,
    2.0000714765e-1,
    -2.4999993993e-1,
    3.3333331174e-1,
)
LN2_HIGH, LN2_LOW = 0.693359375, -2.12194440e-4  # ln 2 split in two, for an exact e * LN2_HIGH
PI_4_PARTS = (-0.78515625, -2.4187564849853515625e-4, -3.77489497744594108e-8)  # -pi/4 in three parts
SIN_POLYNOMIAL = (-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1)
COS_POLYNOMIAL = (2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2)


def cephes_log(x):
    """ln x for positive normal float32 x: x = m 2^e with m in [sqrt(1/2), sqrt(2)), then a
    polynomial in m - 1 plus e ln 2."""
    bits = x.view(np.int32)
    e = ((bits >> 23) - 126).astype(f32)
    m = ((bits & ~0x7F800000) | 0x3F000000).view(f32)  # the mantissa as a number in [0.5, 1)
    small = m < f32(0.707106781186547524)
    e = e - small.astype(f32)
    x = (m - f32(1)) + np.where(small, m, f32(0))  # m - 1, or 2m - 1 when m < sqrt(1/2)
    z = x * x
    y = np.full_like(x, f32(LOG_POLYNOMIAL[0]))
    for coefficient in LOG_POLYNOMIAL[1:]:
        y = fma(y, x, f32(coefficient))
    y = fma(y * x, z, e * f32(LN2_LOW))
    y = y - z * f32(0.5)
    return fma(e, f32(LN2_HIGH), x + y)


def cephes_sincos(x):
    """(sin x, cos x) for float32 x >= 0: reduce to [-pi/4, pi/4] by octant, then a polynomial."""
    octant = (x * f32(4 / np.pi)).astype(np.int32)
    octant = (octant + 1) & ~1  # even octants: the reduced angle lies in [-pi/4, pi/4]
    y = octant.astype(f32)
    for part in PI_4_PARTS:  # x - octant * pi/4, in extended precision
        x = fma(y, f32(part), x)
    z = x * x
    c = fma(f32(COS_POLYNOMIAL[0]), z, f32(COS_POLYNOMIAL[1]))
    c = fma(c, z, f32(COS_POLYNOMIAL[2]))
    c = fma(c * z, z, -(z * f32(0.5))) + f32(1)  # cos of the reduced angle
    s = fma(f32(SIN_POLYNOMIAL[0]), z, f32(SIN_POLYNOMIAL[1]))
    s = fma(s, z, f32(SIN_POLYNOMIAL[2]))
    s = fma(s * z, x, x)  # sin of the reduced angle
    swap = (octant & 2) != 0  # octants 2, 6: sin and cos trade places
    sin, cos = np.where(swap, c, s), np.where(swap, s, c)
    sin = np.where((octant & 4) != 0, -sin, sin)
    cos = np.where(((octant - 2) & 4) == 0, -cos, cos)
    return sin, cos


def fma(a, b, c):
    """a * b + c with one float32 rounding, like the fused multiply-add instruction.

    The float64 product of two float32 numbers is exact; the sum is rounded to float64 "to odd"
    (if inexact, the neighbour with an odd last bit), which makes the final rounding to float32
    correct: no double rounding.
    """
    product = np.asarray(a, np.float64) * np.asarray(b, np.float64)
    c = np.asarray(c, np.float64)
    total = product + c
    error = (product - (total - (total - product))) + (c - (total - product))  # exact: product + c - total
    even = (total.view(np.int64) & 1) == 0
    toward_error = np.nextafter(total, np.where(error > 0, np.inf, -np.inf))
    total = np.where((error != 0) & even, toward_error, total)
    return total.astype(f32)
