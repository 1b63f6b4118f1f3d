"""The original's optimiser, ``torch.optim.AdamW(amsgrad=True)``, as an optax chain; learning-rate schedules.

``optax.scale_by_amsgrad`` keeps the maximum of the bias-corrected second moment; torch keeps the maximum
of the raw one and bias-corrects afterwards, which trains differently. Per step ``t``:
``vmax = max(vmax, v)``; ``update = (m / (1 - b1**t)) / (sqrt(vmax) / sqrt(1 - b2**t) + eps)``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class TorchAmsgradState(NamedTuple):
    count: jnp.ndarray
    mu: optax.Updates
    nu: optax.Updates
    nu_max: optax.Updates


def scale_by_torch_amsgrad(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    """Adam direction with torch's AMSGrad: the running maximum of the raw second moment."""

    def init(params):
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)
        return TorchAmsgradState(jnp.zeros([], jnp.int32), zeros(), zeros(), zeros())

    def update(updates, state, params=None):
        del params
        count = state.count + 1
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, updates)
        nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu)
        t = count.astype(jnp.float32)
        step_correction = 1 - b1**t
        norm_correction = jnp.sqrt(1 - b2**t)
        direction = jax.tree.map(
            lambda m, v: (m / step_correction) / (jnp.sqrt(v) / norm_correction + eps), mu, nu_max
        )
        return direction, TorchAmsgradState(count, mu, nu, nu_max)

    return optax.GradientTransformation(init, update)


def adamw_amsgrad(
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: float = 1e-5,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """``torch.optim.AdamW(lr, betas=(b1, b2), eps, weight_decay, amsgrad=True)``.

    torch decays ``p`` by ``lr·wd·p`` before the Adam step, both from the old parameters, which is what
    adding ``wd·p`` to the direction before scaling by ``-lr`` computes.
    """
    return optax.chain(
        scale_by_torch_amsgrad(b1, b2, eps),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )


LEARNING_RATE_DECAYS = ("constant", "cosine")


def learning_rate_schedule(
    peak: float, num_train_steps: int, warmup_steps: int = 0, decay: str = "constant"
) -> optax.ScalarOrSchedule:
    """``peak`` after a linear warm-up of ``warmup_steps`` from 0; then constant, or a cosine decay to 0
    at ``num_train_steps``. Without either, the number ``peak``: the optimiser state then has no step
    count, as before schedules existed, so such checkpoints still resume."""
    if decay not in LEARNING_RATE_DECAYS:
        raise ValueError(
            f"unknown learning-rate decay {decay!r}; choose one of {', '.join(LEARNING_RATE_DECAYS)}"
        )
    warmup = min(warmup_steps, num_train_steps)
    if decay == "constant":
        if warmup == 0:
            return peak
        after = optax.constant_schedule(peak)
    else:
        after = optax.cosine_decay_schedule(peak, max(1, num_train_steps - warmup))
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])
