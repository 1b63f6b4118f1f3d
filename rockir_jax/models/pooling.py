"""Max pooling as strided slices, with torch's gradient (the first maximum of each window takes it).

XLA:CPU lowers ``reduce_window`` max and the gradient JAX derives for it to slow generic loops. Written
as an elementwise maximum over the k×k strided views of the padded input, the forward pass and the
gradient are plain fusible slices, pads and selects; the gradient is summed per stride phase of the
input (dense shifted arrays) rather than as window² interior-padded full-size arrays. Measurements:
docs/cpu-speed.md.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax


def _window_views(padded: jnp.ndarray, window: int, stride: int, out_hw: tuple[int, int]):
    """The ``window²`` strided views of ``padded`` (NHWC), in row-major window order."""
    n, _, _, c = padded.shape
    out_h, out_w = out_hw
    for i in range(window):
        for j in range(window):
            limit = (n, i + stride * (out_h - 1) + 1, j + stride * (out_w - 1) + 1, c)
            yield (i, j), lax.slice(padded, (0, i, j, 0), limit, (1, stride, stride, 1))


def _output_hw(x: jnp.ndarray, window: int, stride: int, padding: int) -> tuple[int, int]:
    return tuple((size + 2 * padding - window) // stride + 1 for size in x.shape[1:3])


def _pad(x: jnp.ndarray, padding: int) -> jnp.ndarray:
    # torch pads max pooling with -inf, so a padded cell never wins a window.
    spatial = ((0, 0, 0), (padding, padding, 0), (padding, padding, 0), (0, 0, 0))
    return lax.pad(x, jnp.array(-jnp.inf, x.dtype), spatial)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jnp.ndarray, window: int, stride: int, padding: int) -> jnp.ndarray:
    """Square max pooling of NHWC ``x`` (torch's ``max_pool2d(x, window, stride, padding)``)."""
    views = _window_views(_pad(x, padding), window, stride, _output_hw(x, window, stride, padding))
    out = None
    for _, view in views:
        out = view if out is None else jnp.maximum(out, view)
    return out


def _max_pool_forward(x, window, stride, padding):
    out = max_pool(x, window, stride, padding)
    return out, (x, out)


def _max_pool_backward(window, stride, padding, residuals, grad_out):
    x, out = residuals
    padded = _pad(x, padding)
    out_h, out_w = _output_hw(x, window, stride, padding)
    # The padded input, split into stride × stride phases (cells (stride·a + p, stride·b + q)): window
    # position (i, j) of output (r, c) lands in phase (i % stride, j % stride) at (r + i // stride,
    # c + j // stride), so each phase is a sum of dense shifted arrays, interleaved at the end.
    phase_h, phase_w = -(-padded.shape[1] // stride), -(-padded.shape[2] // stride)
    zero = jnp.zeros((), grad_out.dtype)
    phases = [
        [jnp.zeros((x.shape[0], phase_h, phase_w, x.shape[3]), grad_out.dtype)] * stride
        for _ in range(stride)
    ]
    claimed = jnp.zeros(out.shape, bool)
    for (i, j), view in _window_views(padded, window, stride, (out_h, out_w)):
        # Row-major first maximum, as torch's kernel (strict ``>`` while scanning the window).
        first_max = (view == out) & ~claimed
        claimed = claimed | first_max
        routed = jnp.where(first_max, grad_out, zero)
        shift_h, shift_w = i // stride, j // stride
        placed = jnp.pad(
            routed,
            ((0, 0), (shift_h, phase_h - out_h - shift_h), (shift_w, phase_w - out_w - shift_w), (0, 0)),
        )
        phases[i % stride][j % stride] = phases[i % stride][j % stride] + placed
    # (p, q, n, a, b, c) → (n, a, p, b, q, c): cell (stride·a + p, stride·b + q).
    grad_padded = jnp.stack([jnp.stack(row) for row in phases]).transpose(2, 3, 0, 4, 1, 5)
    grad_padded = grad_padded.reshape(x.shape[0], phase_h * stride, phase_w * stride, x.shape[3])
    height, width = x.shape[1:3]
    return (grad_padded[:, padding : padding + height, padding : padding + width, :],)


max_pool.defvjp(_max_pool_forward, _max_pool_backward)
