"""Strided-slice max pooling against torch's max_pool2d: values and gradients, ties included."""

import jax
import numpy as np
import pytest

from rockir_jax.models.pooling import max_pool

torch = pytest.importorskip("torch")


def _torch_pool_and_grad(x_nhwc, grad_out_nhwc, window, stride, padding):
    x = torch.tensor(x_nhwc.transpose(0, 3, 1, 2), requires_grad=True)
    out = torch.nn.functional.max_pool2d(x, window, stride, padding)
    out.backward(torch.tensor(grad_out_nhwc.transpose(0, 3, 1, 2)))
    return out.detach().numpy().transpose(0, 2, 3, 1), x.grad.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize(
    "shape,window,stride,padding",
    [
        ((2, 16, 16, 4), 3, 2, 1),  # the ResNet stem
        ((1, 15, 9, 3), 3, 2, 1),  # odd sizes: the last window is cut by the padding
        ((2, 8, 8, 2), 2, 2, 0),  # non-overlapping windows
        ((1, 7, 7, 2), 3, 1, 1),  # every cell in up to nine windows
    ],
)
def test_values_and_gradient_match_torch_with_ties(shape, window, stride, padding):
    rng = np.random.default_rng(0)
    # Post-ReLU-like values rounded to a coarse grid: many windows hold tied maxima, where torch
    # gives the whole gradient to the first maximum in row-major order.
    x = np.maximum(np.round(rng.standard_normal(shape) * 2), 0).astype(np.float32)
    out, vjp = jax.vjp(lambda v: max_pool(v, window, stride, padding), x)
    grad_out = rng.standard_normal(out.shape).astype(np.float32)
    (grad,) = vjp(grad_out)
    out_ref, grad_ref = _torch_pool_and_grad(x, grad_out, window, stride, padding)
    np.testing.assert_array_equal(np.asarray(out), out_ref)
    np.testing.assert_allclose(np.asarray(grad), grad_ref, rtol=1e-6, atol=1e-6)


def test_negative_inputs_never_pick_the_padding():
    x = -1.0 - np.arange(2 * 5 * 5 * 1, dtype=np.float32).reshape(2, 5, 5, 1)
    out, vjp = jax.vjp(lambda v: max_pool(v, 3, 2, 1), x)
    out_ref, grad_ref = _torch_pool_and_grad(x, np.ones(out.shape, np.float32), 3, 2, 1)
    np.testing.assert_array_equal(np.asarray(out), out_ref)
    np.testing.assert_array_equal(np.asarray(vjp(np.ones(out.shape, np.float32))[0]), grad_ref)
