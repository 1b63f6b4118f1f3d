"""Branch parallelism: the DSNN's backbones on two halves of the devices compute the one-device step."""

import functools

import jax
import numpy as np
import optax
import pytest
from benchmark_lib import pair_batch
from flax import traverse_util

from rockir_jax import sharding
from rockir_jax.models import build_model
from rockir_jax.training import device_layout, dsnn_branch_parallel, losses, step
from rockir_jax.training.optim import adamw_amsgrad

GLOBAL_BATCH = 8
IMAGE_SIZE = 32
# Every term, the embedding's batch-wide contrast included (gathered over the data axis).
LOSS = functools.partial(
    losses.dsnn_loss, weights=losses.DSNN_LOSS_WEIGHTS | {"embedding": 1.0}, axis_name=sharding.DATA_AXIS
)


def _relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _max_error(tree, reference) -> tuple[float, str]:
    tree, reference = (traverse_util.flatten_dict(t, sep="/") for t in (tree, reference))
    assert tree.keys() == reference.keys()
    return max((_relative_error(tree[k], reference[k]), k) for k in reference)


@pytest.fixture(scope="module")
def model_and_variables():
    model = build_model("dsnn", "resnet18", axis_name=sharding.DATA_AXIS)
    variables = jax.tree.map(np.asarray, step.init_variables(model, jax.random.key(0), IMAGE_SIZE))
    # Zero-initialised biases would make "relative to the parameters" mean "relative to one update".
    rng = np.random.default_rng(1)
    variables["params"] = jax.tree.map(
        lambda p: p if p.any() else rng.normal(0, 0.1, p.shape).astype(p.dtype), variables["params"]
    )
    return model, variables


def _one_step(model, variables, layout, tx):
    state = layout.place(step.create_train_state(model, jax.tree.map(np.copy, variables), tx))
    train_step = layout.train_step(model, LOSS)
    # Some batches put a ReLU input or a max-pool tie within float32 rounding, where any change of
    # summation order (8 data-parallel devices too) flips a few gradient elements; this one does not.
    batch = pair_batch(GLOBAL_BATCH, IMAGE_SIZE, seed=11)
    state, metrics = train_step(state, layout.shard_batch(batch))
    return jax.device_get((layout.canonical(state), metrics))


@pytest.fixture(scope="module")
def reference(model_and_variables):
    """One plain-SGD step on one device (a linear rule keeps the parameters a faithful image of the
    gradients; Adam's first step maps each gradient element to about ±lr)."""
    model, variables = model_and_variables
    layout = device_layout.plan(jax.devices()[:1], GLOBAL_BATCH, branch_parallel=True)
    assert not layout.branch_parallel, "one device cannot split the branches"
    return _one_step(model, variables, layout, optax.sgd(0.005))


@pytest.mark.parametrize("devices", [2, 8])
def test_branch_parallel_step_equals_one_device(model_and_variables, reference, devices):
    model, variables = model_and_variables
    layout = device_layout.plan(jax.devices()[:devices], GLOBAL_BATCH, branch_parallel=True)
    assert layout.branch_parallel and dict(layout.mesh.shape) == {"data": devices // 2, "branch": 2}
    state, metrics = _one_step(model, variables, layout, optax.sgd(0.005))
    ref_state, ref_metrics = reference
    for name in ref_metrics:  # the loss terms and the gradients' global norm
        assert _relative_error(metrics[name], ref_metrics[name]) <= 1e-5, name
    assert _max_error(state.params, ref_state.params)[0] <= 1e-5, _max_error(state.params, ref_state.params)
    assert _max_error(state.batch_stats, ref_state.batch_stats)[0] <= 1e-5
    assert _max_error(state.params, variables["params"])[0] > 1e-3, "the step changed the parameters"


def test_branch_parallel_moving_average_follows_the_one_device_step(model_and_variables, reference):
    model, variables = model_and_variables
    layout = device_layout.plan(jax.devices()[:2], GLOBAL_BATCH, branch_parallel=True)
    decay = 0.99
    state = layout.place(
        step.create_train_state(model, jax.tree.map(np.copy, variables), optax.sgd(0.005), ema_decay=decay)
    )
    assert state.ema_params["backbones"]["conv1"]["kernel"].sharding.spec == jax.sharding.PartitionSpec(
        "branch"
    )
    state, _ = layout.train_step(model, LOSS)(
        state, layout.shard_batch(pair_batch(GLOBAL_BATCH, IMAGE_SIZE, seed=11))
    )
    state = jax.device_get(layout.canonical(state))
    keep = min(decay, 2 / 11)  # after one step
    expected = jax.tree.map(
        lambda before, after: keep * np.float64(before) + (1 - keep) * np.float64(after),
        variables["params"],
        reference[0].params,
    )
    assert _max_error(state.ema_params, expected)[0] <= 1e-5, _max_error(state.ema_params, expected)


def test_each_backbone_lives_on_its_own_branch(model_and_variables):
    model, variables = model_and_variables
    layout = device_layout.plan(jax.devices()[:2], GLOBAL_BATCH, branch_parallel=True)
    state = layout.place(step.create_train_state(model, variables, adamw_amsgrad(1e-4)))
    kernel = state.params["backbones"]["conv1"]["kernel"]
    expected = {
        device: variables["params"][name]["conv1"]["kernel"]
        for device, name in zip(layout.mesh.devices[0], dsnn_branch_parallel.BRANCHES, strict=True)
    }
    for shard in kernel.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data)[0], expected[shard.device])
    # The optimiser's moments follow the parameters; the heads are replicated.
    moment = state.opt_state[0].mu["backbones"]["conv1"]["kernel"]
    assert moment.sharding.spec == kernel.sharding.spec == jax.sharding.PartitionSpec("branch")
    assert state.params["head"]["fc_out"]["kernel"].sharding.is_fully_replicated


def test_canonical_layout_round_trip(model_and_variables):
    model, variables = model_and_variables
    layout = device_layout.plan(jax.devices(), GLOBAL_BATCH, branch_parallel=True)
    state = step.create_train_state(model, variables, adamw_amsgrad(1e-4))
    back = jax.device_get(layout.canonical(layout.place(state)))
    for original, restored in [(state.params, back.params), (state.opt_state, back.opt_state)]:
        assert jax.tree.structure(original) == jax.tree.structure(restored)
        for a, b in zip(jax.tree.leaves(original), jax.tree.leaves(restored), strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("devices", "batch", "branch_parallel", "expected_branch_parallel", "data_shards"),
    [(8, 8, True, True, 4), (8, 8, False, False, 8), (1, 8, True, False, 1), (3, 6, True, False, 3)],
)
def test_plan_splits_branches_only_over_an_even_device_count(
    devices, batch, branch_parallel, expected_branch_parallel, data_shards
):
    layout = device_layout.plan(jax.devices()[:devices], batch, branch_parallel=branch_parallel)
    assert layout.branch_parallel == expected_branch_parallel
    assert layout.mesh.shape["data"] == data_shards
    assert layout.data_mesh.devices.size == devices


def test_plan_refuses_a_requested_count_that_does_not_split_the_batch():
    with pytest.raises(ValueError, match="does not divide evenly over 3 devices"):
        device_layout.plan(jax.devices(), GLOBAL_BATCH, requested=3, branch_parallel=True)
