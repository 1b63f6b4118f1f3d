"""The sharded train step: 8 devices compute the step that 1 device computes over the same batch."""

import functools

import jax
import numpy as np
import optax
import pytest
from flax import traverse_util

from rockir_jax import sharding
from rockir_jax.models import build_model
from rockir_jax.training import losses, step

GLOBAL_BATCH = 8
IMAGE_SIZE = 32


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((2, GLOBAL_BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    return {
        "image0": images[0],
        "image1": images[1],
        "same_sample": np.array([1, 0, 1, 1, 0, 0, 1, 0], np.float32),
        "same_meta": np.array([1, 0, 0, 1, 1, 0, 1, 0], np.float32),
        "targets0": rng.uniform(0, 1, (GLOBAL_BATCH, 2)).astype(np.float32),
        "targets1": rng.uniform(0, 1, (GLOBAL_BATCH, 2)).astype(np.float32),
        "reservoir0": np.array([0, 1, 0, 2, 1, 0, 2, 1], np.int32),
        "reservoir1": np.array([0, 2, 0, 2, 0, 1, 2, 2], np.int32),
    }


def _relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.fixture(scope="module")
def stepped():
    """Initial variables and the result of one train step on 1 and on 8 devices.

    The update rule is plain SGD: Adam's first step maps every gradient element to about ±lr, so an
    element whose gradient is at float32 rounding level could flip sign between two summation orders;
    a linear rule makes the updated parameters a faithful image of the gradients.
    """
    assert jax.device_count() == 8, "tests/conftest.py sets 8 CPU devices"
    # Direct convolutions: an 8-device data-parallel step with Winograd's transforms compiles in 33 s
    # against 11 s. test_parallel checks sharded Winograd steps, test_winograd the algorithm itself.
    model = build_model("dsnn", "resnet18", axis_name=sharding.DATA_AXIS, conv_algorithm="direct")
    variables = jax.tree.map(np.asarray, step.init_variables(model, jax.random.key(0), IMAGE_SIZE))
    # Zero-initialised biases would make "relative to the parameters" mean "relative to one update".
    rng = np.random.default_rng(1)
    variables["params"] = jax.tree.map(
        lambda p: p if p.any() else rng.normal(0, 0.1, p.shape).astype(p.dtype), variables["params"]
    )
    results = {}
    for devices in (1, 8):
        mesh = sharding.make_mesh(jax.devices()[:devices])
        state = sharding.replicate(step.create_train_state(model, variables, optax.sgd(0.005)), mesh)
        # Every term, the embedding's batch-wide contrast included (gathered over the data axis).
        loss = functools.partial(
            losses.dsnn_loss,
            weights=losses.DSNN_LOSS_WEIGHTS | {"embedding": 1.0},
            axis_name=sharding.DATA_AXIS,
        )
        train_step = step.make_train_step(mesh, loss)
        state, metrics = train_step(state, sharding.shard_batch(_batch(), mesh))
        results[devices] = jax.device_get((state, metrics))
    return variables, results


def test_eight_devices_equal_one_device(stepped):
    _, results = stepped
    (state1, metrics1), (state8, metrics8) = results[1], results[8]
    for name in metrics1:  # the loss terms and the gradients' global norm
        assert _relative_error(metrics8[name], metrics1[name]) <= 1e-5, name
    params1 = traverse_util.flatten_dict(state1.params, sep="/")
    params8 = traverse_util.flatten_dict(state8.params, sep="/")
    errors = {k: _relative_error(params8[k], params1[k]) for k in params1}
    assert max(errors.values()) <= 1e-5, sorted(errors.items(), key=lambda kv: -kv[1])[:3]
    stats1 = traverse_util.flatten_dict(state1.batch_stats, sep="/")
    stats8 = traverse_util.flatten_dict(state8.batch_stats, sep="/")
    errors = {k: _relative_error(stats8[k], stats1[k]) for k in stats1}
    assert max(errors.values()) <= 1e-5, sorted(errors.items(), key=lambda kv: -kv[1])[:3]


def test_batch_norm_statistics_are_global(stepped):
    """One device per pair: without cross-device BatchNorm, per-device statistics would differ."""
    variables, results = stepped
    state8 = results[8][0]
    new_mean = np.asarray(state8.batch_stats["image_backbone"]["bn1"]["mean"])
    old_mean = variables["batch_stats"]["image_backbone"]["bn1"]["mean"]
    # Two backbone calls per step (image 0, then image 1), momentum 0.9: 0.1·m0 then 0.9·(.)+0.1·m1.
    kernel = variables["params"]["image_backbone"]["conv1"]["kernel"]
    conv = lambda x: jax.lax.conv_general_dilated(
        x, kernel, (2, 2), ((3, 3), (3, 3)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    batch = _batch()
    m0 = np.asarray(conv(batch["image0"])).mean(axis=(0, 1, 2))
    m1 = np.asarray(conv(batch["image1"])).mean(axis=(0, 1, 2))
    expected = 0.9 * (0.9 * old_mean + 0.1 * m0) + 0.1 * m1
    np.testing.assert_allclose(new_mean, expected, rtol=1e-4, atol=1e-6)


def test_gradients_reach_every_parameter(stepped):
    variables, results = stepped
    before = traverse_util.flatten_dict(variables["params"], sep="/")
    after = traverse_util.flatten_dict(results[8][0].params, sep="/")
    unchanged = [k for k in before if np.array_equal(before[k], after[k])]
    assert not unchanged
    for prefix in ("image_backbone/", "rock_backbone/", "head/", "regression/"):
        assert any(k.startswith(prefix) for k in after)


def test_uneven_global_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="does not divide evenly over 8 devices"):
        sharding.check_divisible(12, sharding.make_mesh())


@pytest.mark.parametrize(("batch", "expected"), [(16, 8), (12, 6), (7, 7), (9, 3), (11, 1)])
def test_training_takes_the_most_devices_that_split_the_batch(batch, expected):
    devices = jax.devices()
    assert len(devices) == 8
    assert sharding.data_parallel_devices(devices, batch) == devices[:expected]


def test_a_requested_device_count_is_taken_as_is():
    assert len(sharding.data_parallel_devices(jax.devices(), 16, requested=5)) == 5
