"""Losses against float64 numpy from torch's definitions; the optimiser against torch.optim.AdamW."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rockir_jax.training import losses, optim


def _bce(p, y):
    p = np.asarray(p, np.float64)
    with np.errstate(divide="ignore"):
        log_p, log_q = np.maximum(np.log(p), -100), np.maximum(np.log(1 - p), -100)
    return -np.mean(y * log_p + (1 - y) * log_q)


def _smooth_l1(x, y):
    d = np.abs(np.asarray(x, np.float64) - y)
    return np.mean(np.where(d < 1, 0.5 * d**2, d - 0.5))


def test_bce_clamps_logs_like_torch():
    p = np.array([0.2, 0.9, 1.0, 0.0, 0.5], np.float32)
    y = np.array([1.0, 0.0, 0.0, 1.0, 1.0], np.float32)
    # p = 1 with y = 0 and p = 0 with y = 1 each cost 100, the clamp.
    np.testing.assert_allclose(losses.binary_cross_entropy(p, y), _bce(p, y), rtol=1e-6)
    assert _bce(p, y) > 200 / 5


def test_smooth_l1_both_branches():
    x = np.array([[0.1, 3.0], [-2.5, 0.9]], np.float32)
    y = np.zeros((2, 2), np.float32)
    np.testing.assert_allclose(losses.smooth_l1(x, y), (0.005 + 2.5 + 2.0 + 0.405) / 4, rtol=1e-6)
    np.testing.assert_allclose(losses.smooth_l1(x, y), _smooth_l1(x, y), rtol=1e-6)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 10.0), (0.5, 2.0, 0.0, 1.0)])
def test_dsnn_loss_is_the_weighted_composite(weights):
    rng = np.random.default_rng(0)
    n = 16
    outputs = {k: rng.uniform(0.01, 0.99, n).astype(np.float32) for k in ("p", "p_img", "p_rock")}
    outputs |= {k: rng.standard_normal((n, 2)).astype(np.float32) * 2 for k in ("reg0", "reg1")}
    batch = {
        "same_sample": rng.integers(0, 2, n).astype(np.float32),
        "same_meta": rng.integers(0, 2, n).astype(np.float32),
        "targets0": rng.standard_normal((n, 2)).astype(np.float32),
        "targets1": rng.standard_normal((n, 2)).astype(np.float32),
    }
    named = dict(zip(("fused", "image", "metadata", "regression"), weights, strict=True))
    loss, terms = losses.dsnn_loss(outputs, batch, named)
    s, m = batch["same_sample"], batch["same_meta"]
    expected = (
        weights[0] * _bce(outputs["p"], s * m)
        + weights[1] * _bce(outputs["p_img"], s)
        + weights[2] * _bce(outputs["p_rock"], m)
        + weights[3]
        * (_smooth_l1(outputs["reg0"], batch["targets0"]) + _smooth_l1(outputs["reg1"], batch["targets1"]))
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(terms["loss_metadata"], _bce(outputs["p_rock"], m), rtol=1e-5)


def test_target_scale_divides_each_targets_error():
    rng = np.random.default_rng(3)
    n, scale = 12, np.array([0.06, 0.15])
    outputs = {k: rng.uniform(0.01, 0.99, n).astype(np.float32) for k in ("p", "p_img", "p_rock")}
    outputs |= {k: (rng.standard_normal((n, 2)) * scale).astype(np.float32) for k in ("reg0", "reg1")}
    batch = {
        "same_sample": np.ones(n, np.float32),
        "same_meta": np.ones(n, np.float32),
        "targets0": (rng.standard_normal((n, 2)) * scale).astype(np.float32),
        "targets1": (rng.standard_normal((n, 2)) * scale).astype(np.float32),
    }
    _, terms = losses.dsnn_loss(outputs, batch, losses.DSNN_LOSS_WEIGHTS, target_scale=tuple(scale))
    expected = sum(_smooth_l1(outputs[f"reg{i}"] / scale, batch[f"targets{i}"] / scale) for i in (0, 1))
    np.testing.assert_allclose(terms["loss_regression"], expected, rtol=1e-5)
    # Unscaled, errors this small are in SmoothL1's quadratic range and weigh far less.
    _, plain = losses.dsnn_loss(outputs, batch)
    assert plain["loss_regression"] < expected / 20


@pytest.mark.parametrize("warmup, decay", [(0, "cosine"), (10, "cosine"), (10, "constant")])
def test_learning_rate_schedule_closed_form(warmup, decay):
    peak, steps = 3e-4, 100
    schedule = optim.learning_rate_schedule(peak, steps, warmup_steps=warmup, decay=decay)
    for t in range(steps):
        if t < warmup:
            expected = peak * t / warmup
        elif decay == "constant":
            expected = peak
        else:
            expected = peak * 0.5 * (1 + np.cos(np.pi * (t - warmup) / (steps - warmup)))
        np.testing.assert_allclose(float(schedule(t)), expected, rtol=1e-5, atol=1e-9, err_msg=str(t))


def test_constant_learning_rate_is_a_plain_number():
    # No schedule state in the optimiser, so checkpoints of runs without schedules keep their layout.
    assert optim.learning_rate_schedule(1e-3, 50) == 1e-3
    with pytest.raises(ValueError, match="unknown learning-rate decay 'linear'"):
        optim.learning_rate_schedule(1e-3, 50, decay="linear")


def test_adamw_amsgrad_matches_torch_over_several_steps():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    shapes = {"w": (5, 3), "b": (3,)}
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    grads = [
        {k: (rng.standard_normal(s) * scale).astype(np.float32) for k, s in shapes.items()}
        for scale in (1.0, 0.1, 3.0, 0.01)  # shrinking and growing: AMSGrad's max matters
    ]
    lr, wd = 1e-2, 1e-5

    torch_params = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    torch_opt = torch.optim.AdamW(torch_params.values(), lr=lr, weight_decay=wd, amsgrad=True)
    tx = optim.adamw_amsgrad(lr, weight_decay=wd)
    jax_params = jax.tree.map(jnp.asarray, params)
    state = tx.init(jax_params)
    for g in grads:
        for k, p in torch_params.items():
            p.grad = torch.tensor(g[k])
        torch_opt.step()
        updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, jax_params)
        jax_params = jax.tree.map(lambda p, u: p + u, jax_params, updates)
    for k, p in torch_params.items():
        np.testing.assert_allclose(jax_params[k], p.detach().numpy(), rtol=1e-6, atol=1e-6)


def test_moving_average_of_the_parameters_closed_form():
    """``TrainState.apply_gradients`` keeps ``ema_params`` as the float64 recurrence from the initial
    parameters, with the decay capped by ``(1 + t) / (10 + t)`` at step ``t``; training is unchanged."""
    import optax

    from rockir_jax.training.step import TrainState

    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 2)).astype(np.float32), "b": rng.normal(size=2).astype(np.float32)}
    grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params) for _ in range(30)]
    decay = 0.9
    states = {
        ema: TrainState.create(
            apply_fn=None,
            params=params,
            tx=optax.sgd(0.1),
            ema_params=params if ema else None,
            ema_decay=decay if ema else 0.0,
        )
        for ema in (True, False)
    }
    expected = jax.tree.map(lambda p: p.astype(np.float64), params)
    for t, grad in enumerate(grads, start=1):
        states = {ema: state.apply_gradients(grads=grad) for ema, state in states.items()}
        keep = min(decay, (1 + t) / (10 + t))
        current = jax.tree.map(lambda p: np.asarray(p, np.float64), states[False].params)
        expected = jax.tree.map(lambda e, p, keep=keep: keep * e + (1 - keep) * p, expected, current)
    for name in params:
        np.testing.assert_array_equal(states[True].params[name], states[False].params[name])
        np.testing.assert_allclose(states[True].ema_params[name], expected[name], rtol=1e-5, atol=1e-6)
        assert np.abs(expected[name] - current[name]).max() > 1e-2, "the average lags the parameters"
    assert states[True].eval_params() is states[True].ema_params
    assert states[False].eval_params() is states[False].params


def _supcon_float64(embeddings, labels, temperature):
    """Khosla et al.'s L_out, anchor by anchor in float64; anchors without a positive count 0."""
    e = np.asarray(embeddings, np.float64)
    total = 0.0
    for i in range(len(e)):
        others = [j for j in range(len(e)) if j != i]
        logits = {j: e[i] @ e[j] / temperature for j in others}
        log_norm = np.log(sum(np.exp(v) for v in logits.values()))
        positives = [j for j in others if labels[j] == labels[i]]
        if positives:
            total += -np.mean([logits[j] - log_norm for j in positives])
    return total / len(e)


def test_supervised_contrastive_against_float64_reference():
    rng = np.random.default_rng(5)
    e = rng.standard_normal((12, 8))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    labels = np.array([0, 1, 2, 0, 1, 3, 0, 2, 1, 1, 0, 4])  # 3 and 4 have no positive
    got = losses.supervised_contrastive(e.astype(np.float32), labels, temperature=0.2)
    np.testing.assert_allclose(got, _supcon_float64(e, labels, 0.2), rtol=1e-5)


def test_embedding_term_joins_the_dsnn_loss_only_when_weighted():
    rng = np.random.default_rng(6)
    n = 6
    outputs = {k: rng.uniform(0.01, 0.99, n).astype(np.float32) for k in ("p", "p_img", "p_rock")}
    outputs |= {k: rng.standard_normal((n, 2)).astype(np.float32) for k in ("reg0", "reg1")}
    unit = rng.standard_normal((2, n, 4))
    unit /= np.linalg.norm(unit, axis=-1, keepdims=True)
    outputs |= {"embedding0": unit[0].astype(np.float32), "embedding1": unit[1].astype(np.float32)}
    batch = {
        "same_sample": np.ones(n, np.float32),
        "same_meta": np.ones(n, np.float32),
        "targets0": np.zeros((n, 2), np.float32),
        "targets1": np.zeros((n, 2), np.float32),
        "reservoir0": np.array([0, 1, 2, 0, 1, 2], np.int32),
        "reservoir1": np.array([0, 0, 2, 1, 1, 2], np.int32),
    }
    base, terms = losses.dsnn_loss(outputs, batch)
    assert "loss_embedding" not in terms
    weighted, terms = losses.dsnn_loss(outputs, batch, losses.DSNN_LOSS_WEIGHTS | {"embedding": 0.5})
    expected = _supcon_float64(
        np.concatenate(unit), np.concatenate([batch["reservoir0"], batch["reservoir1"]]), 0.1
    )
    np.testing.assert_allclose(terms["loss_embedding"], expected, rtol=1e-5)
    np.testing.assert_allclose(weighted, base + 0.5 * expected, rtol=1e-5)
    with pytest.raises(ValueError, match="loss weights"):
        losses.dsnn_loss(outputs, batch, {"fused": 1.0})
