"""Winograd F(2×2, 3×3) convolution: the 3×3 stride-1 convolutions of a ResNet with 2.25× fewer multiplies.

Lavin and Gray (CVPR 2016): each 2×2 output tile is ``Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`` of a 4×4 input tile
``d`` and the kernel ``g``. The gradients are Winograd convolutions too, so no weight-gradient convolution
is left. It pays on CPU in float32 for wide layers, so :func:`use_winograd` picks it only there; results
differ from a direct convolution only by float32 rounding. The algorithm and when it pays:
docs/internals.md.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

ConvAlgorithm = Literal["auto", "direct", "winograd"]

MIN_CHANNELS = 128
"""Narrower convolutions keep the direct algorithm ("auto"): below it the products are memory bound."""

# Bᵀ, G and Aᵀ of F(2×2, 3×3) (Lavin and Gray, section 4.1).
_INPUT_TRANSFORM = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
_KERNEL_TRANSFORM = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)
_OUTPUT_TRANSFORM = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)
# The kernel and output transforms on flattened tiles, index (u, v) → 4u + v (resp. 2i + j, 3a + b):
# G g Gᵀ = kron(G, G) · vec(g) and Aᵀ m A = kron(Aᵀ, Aᵀ) · vec(m).
_KERNEL_TRANSFORM_2D = np.kron(_KERNEL_TRANSFORM, _KERNEL_TRANSFORM)
_OUTPUT_TRANSFORM_2D = np.kron(_OUTPUT_TRANSFORM, _OUTPUT_TRANSFORM)
# G·J = P·G for the 3×3 flip J and the swap P of rows 0 and 3, so the transformed flipped kernel is the
# transformed kernel with tile positions 0 and 3 swapped in both dimensions.
_SWAP = (3, 1, 2, 0)
_FLIPPED_POSITIONS = np.array([4 * _SWAP[u] + _SWAP[v] for u in range(4) for v in range(4)])


def use_winograd(algorithm: ConvAlgorithm, channels: int, dtype: jnp.dtype) -> bool:
    """Whether a 3×3 stride-1 convolution with ``channels`` inputs runs as Winograd.

    ``"auto"`` picks it on the CPU backend for float32 and at least :data:`MIN_CHANNELS` channels.
    """
    if algorithm == "direct":
        return False
    if algorithm == "winograd":
        return True
    if algorithm != "auto":
        raise ValueError(f"conv_algorithm must be 'auto', 'direct' or 'winograd', got {algorithm!r}")
    return jax.default_backend() == "cpu" and jnp.dtype(dtype) == jnp.float32 and channels >= MIN_CHANNELS


def _transform_2d(tiles: list[list[jnp.ndarray]], matrix: np.ndarray) -> jnp.ndarray:
    """``matrix · tiles · matrixᵀ`` over the two tile dimensions, flattened to ``(positions, ...)``.

    One broadcast sum ``Σ_ab outer(matrix[:, a], matrix[:, b]) ⊗ tiles[a][b]`` over the nonzero terms,
    which XLA fuses with the tiles' slices into a single elementwise pass. Stacking one sum per position
    ran as fast but compiled 16 kernels per transform.
    """
    size = matrix.shape[0]
    total = None
    for a, row in enumerate(tiles):
        for b, tile in enumerate(row):
            coefficients = np.outer(matrix[:, a], matrix[:, b])
            if not coefficients.any():
                continue
            term = jnp.asarray(coefficients.reshape(size, size, *[1] * tile.ndim), tile.dtype) * tile
            total = term if total is None else total + term
    return total.reshape(size * size, *total.shape[2:])


def _flat_transform(matrix: np.ndarray, tiles: jnp.ndarray) -> jnp.ndarray:
    """``matrix · tiles`` over the flattened tile positions (the leading axis) as one matrix product.

    For the kernels' and the output transform: a product is materialised where a broadcast sum would be
    fused into the output's consumers and recomputed by each, and it has no zero terms to multiply.
    """
    flat = jnp.dot(jnp.asarray(matrix, tiles.dtype), tiles.reshape(tiles.shape[0], -1))
    return flat.reshape(matrix.shape[0], *tiles.shape[1:])


def _num_tiles(height: int, width: int) -> tuple[int, int]:
    return -(-height // 2), -(-width // 2)


def _input_tiles(x: jnp.ndarray) -> jnp.ndarray:
    """``Bᵀ d B`` of every 4×4 input tile (stride 2, padding 1): ``(16, N·tiles, C)``."""
    n, height, width, channels = x.shape
    rows, cols = _num_tiles(height, width)
    padded = jnp.pad(x, ((0, 0), (1, 2 * rows + 1 - height), (1, 2 * cols + 1 - width), (0, 0)))
    tiles = [[padded[:, a : a + 2 * rows : 2, b : b + 2 * cols : 2] for b in range(4)] for a in range(4)]
    return _transform_2d(tiles, _INPUT_TRANSFORM).reshape(16, n * rows * cols, channels)


def _output_from_tiles(products: jnp.ndarray, shape: tuple[int, int, int]) -> jnp.ndarray:
    """``Aᵀ m A`` of every tile, assembled to ``(N, H, W, K)``."""
    n, height, width = shape
    rows, cols = _num_tiles(height, width)
    out = _flat_transform(_OUTPUT_TRANSFORM_2D, products).reshape(2, 2, n, rows, cols, -1)
    out = out.transpose(2, 3, 0, 4, 1, 5).reshape(n, 2 * rows, 2 * cols, -1)
    return out[:, :height, :width]


def _output_tiles_transposed(grad: jnp.ndarray) -> jnp.ndarray:
    """The transpose of :func:`_output_from_tiles`: ``A g Aᵀ`` of every 2×2 output tile."""
    n, height, width, features = grad.shape
    rows, cols = _num_tiles(height, width)
    grad = jnp.pad(grad, ((0, 0), (0, 2 * rows - height), (0, 2 * cols - width), (0, 0)))
    grad = grad.reshape(n, rows, 2, cols, 2, features)
    tiles = [[grad[:, :, a, :, b] for b in range(2)] for a in range(2)]
    return _transform_2d(tiles, _OUTPUT_TRANSFORM.T).reshape(16, n * rows * cols, features)


def _kernel_tiles(kernel: jnp.ndarray) -> jnp.ndarray:
    """``G g Gᵀ`` of an ``(3, 3, C, K)`` kernel: ``(16, C, K)``."""
    return _flat_transform(_KERNEL_TRANSFORM_2D, kernel.reshape(9, *kernel.shape[2:]))


def _kernel_tiles_transposed(grad: jnp.ndarray) -> jnp.ndarray:
    """The transpose of :func:`_kernel_tiles`: ``Gᵀ u G`` back to ``(3, 3, C, K)``."""
    return _flat_transform(_KERNEL_TRANSFORM_2D.T, grad).reshape(3, 3, *grad.shape[1:])


def _products(
    input_tiles: jnp.ndarray, kernel_tiles: jnp.ndarray, transpose_kernel: bool = False
) -> jnp.ndarray:
    """The 16 matrix products over channels, one per tile position."""
    return jnp.einsum("pmk,pck->pmc" if transpose_kernel else "pmc,pck->pmk", input_tiles, kernel_tiles)


@jax.custom_vjp
def conv3x3(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """A 3×3, stride-1, padding-1 convolution of NHWC ``x`` with an HWIO ``kernel``, by Winograd F(2×2, 3×3).

    Equal to ``lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC",
    "HWIO", "NHWC"))`` up to float rounding, for any height and width; differentiable in both arguments.
    """
    return _conv3x3_forward(x, kernel)[0]


def _conv3x3_forward(x, kernel):
    # The kernel gradient needs the transformed input tiles (4× the input's size): kept rather than
    # recomputed, which would cost another pass over the input per convolution.
    input_tiles, kernel_tiles = _input_tiles(x), _kernel_tiles(kernel)
    y = _output_from_tiles(_products(input_tiles, kernel_tiles), x.shape[:3])
    return y, (input_tiles, kernel_tiles)


def _conv3x3_backward(residuals, grad):
    input_tiles, kernel_tiles = residuals
    flipped = kernel_tiles[_FLIPPED_POSITIONS]
    grad_x = _output_from_tiles(_products(_input_tiles(grad), flipped, transpose_kernel=True), grad.shape[:3])
    grad_kernel_tiles = jnp.einsum("pmc,pmk->pck", input_tiles, _output_tiles_transposed(grad))
    return grad_x, _kernel_tiles_transposed(grad_kernel_tiles)


conv3x3.defvjp(_conv3x3_forward, _conv3x3_backward)
