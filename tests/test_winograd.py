"""Winograd F(2×2, 3×3) convolution against a float64 numpy convolution, values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rockir_jax.models import resnet, torch_init
from rockir_jax.models.resnet import WinogradConv3x3
from rockir_jax.models.winograd import MIN_CHANNELS, conv3x3, use_winograd

SHAPES = [(2, 7, 5, 3, 4), (1, 1, 1, 2, 3), (3, 8, 8, 16, 8), (1, 2, 9, 5, 6)]  # N, H, W, C, K


def _conv_reference(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """3×3, stride 1, padding 1, float64, as nine shifted matrix products."""
    n, height, width, _ = x.shape
    padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, height, width, kernel.shape[-1]))
    for a in range(3):
        for b in range(3):
            out += padded[:, a : a + height, b : b + width] @ kernel[a, b].astype(np.float64)
    return out


def _grads_reference(x: np.ndarray, kernel: np.ndarray, grad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The convolution's vector-Jacobian product in float64: full correlation with the flipped kernel
    for the input, shifted input-gradient products for the kernel."""
    _, height, width, _ = x.shape
    grad_x = _conv_reference(grad, np.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
    padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    grad_kernel = np.empty(kernel.shape)
    for a in range(3):
        for b in range(3):
            patch = padded[:, a : a + height, b : b + width]
            grad_kernel[a, b] = np.einsum("nhwc,nhwk->ck", patch, grad.astype(np.float64))
    return grad_x, grad_kernel


def _inputs(shape, seed=0):
    n, h, w, c, k = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    kernel = (rng.standard_normal((3, 3, c, k)) / np.sqrt(9 * c)).astype(np.float32)
    grad = rng.standard_normal((n, h, w, k)).astype(np.float32)
    return x, kernel, grad


def _close(actual, reference, rtol=1e-5):
    scale = np.max(np.abs(reference))
    np.testing.assert_allclose(np.asarray(actual, np.float64), reference, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_float64_convolution(shape):
    x, kernel, _ = _inputs(shape)
    _close(jax.jit(conv3x3)(x, kernel), _conv_reference(x, kernel))


@pytest.mark.parametrize("shape", SHAPES)
def test_gradients_match_float64_convolution(shape):
    x, kernel, grad = _inputs(shape, seed=1)
    _, vjp = jax.vjp(conv3x3, jnp.asarray(x), jnp.asarray(kernel))
    grad_x, grad_kernel = jax.jit(vjp)(jnp.asarray(grad))
    grad_x_ref, grad_kernel_ref = _grads_reference(x, kernel, grad)
    _close(grad_x, grad_x_ref)
    _close(grad_kernel, grad_kernel_ref)


def test_auto_picks_winograd_for_wide_float32_cpu_convolutions():
    assert jax.default_backend() == "cpu"
    assert use_winograd("auto", MIN_CHANNELS, jnp.float32)
    assert not use_winograd("auto", MIN_CHANNELS // 2, jnp.float32)  # stem and stage 1 stay direct
    assert not use_winograd("auto", 512, jnp.bfloat16)
    assert use_winograd("winograd", 64, jnp.float32) and not use_winograd("direct", 512, jnp.float32)
    with pytest.raises(ValueError, match="conv_algorithm"):
        use_winograd("fft", 512, jnp.float32)


def test_parameters_do_not_depend_on_the_algorithm():
    """Checkpoints and ported weights load into either algorithm: same names, shapes, dtypes and
    initial values."""
    x = jnp.zeros((1, 32, 32, 3))
    shapes = {
        algorithm: jax.eval_shape(resnet("resnet18", conv_algorithm=algorithm)().init, jax.random.key(0), x)
        for algorithm in ("direct", "winograd")
    }
    assert shapes["direct"] == shapes["winograd"]
    x = jnp.zeros((1, 8, 8, 16))
    # The direct convolution as the ResNet builds it (torchvision's initialisation).
    conv = nn.Conv(32, (3, 3), padding=1, use_bias=False, kernel_init=torch_init.conv_kernel_init)
    direct = conv.init(jax.random.key(3), x)
    np.testing.assert_array_equal(
        WinogradConv3x3(32).init(jax.random.key(3), x)["params"]["kernel"], direct["params"]["kernel"]
    )


def test_resnet_gradients_agree_across_algorithms():
    """Parameter gradients of a whole ResNet-18 with every 3×3 stride-1 convolution as Winograd, against
    XLA's direct convolutions (themselves checked against torchvision in test_resnet_porting).

    Running statistics, not batch ones: with a handful of values per channel at the last stage, batch
    normalisation amplifies any rounding difference beyond what a tolerance can tell from a bug.
    """
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
    projection = rng.standard_normal((2, 1, 1, 512)).astype(np.float32)
    variables = resnet("resnet18", conv_algorithm="direct")().init(jax.random.key(1), x)

    def grads(algorithm):
        model = resnet("resnet18", conv_algorithm=algorithm)()

        def loss(params):
            features = model.apply({**variables, "params": params}, x, output="feature_map")
            return jnp.sum(features * projection)

        return jax.jit(jax.grad(loss))(variables["params"])

    direct, winograd = grads("direct"), grads("winograd")
    for path, reference in jax.tree_util.tree_leaves_with_path(direct):
        actual = dict(jax.tree_util.tree_leaves_with_path(winograd))[path]
        scale = float(np.max(np.abs(reference))) or 1.0
        np.testing.assert_allclose(
            actual, reference, rtol=0, atol=1e-4 * scale, err_msg=jax.tree_util.keystr(path)
        )
