"""The default's data, size and budget with the original RockIR's objective and data treatment.

Raw regression targets weighted 10, h/v flips only, a constant learning rate of 3e-4, each image embedded
as it is: what ``configs/default.py`` is measured against (docs/quality.md).

python -m rockir_jax.train --config configs/original_recipe.py --workdir runs/original_recipe
"""

import ml_collections

from configs import default


def use_original_objective(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Sets the original's loss, targets, pairs, labels, augmentation and (unscheduled) learning rate, no
    weight average and one orientation at test time, in place."""
    config.loss_weights = ml_collections.ConfigDict(
        dict(fused=1.0, image=1.0, metadata=1.0, regression=10.0, embedding=0.0)
    )
    config.standardize_targets = False
    config.warmup_steps = 0
    config.learning_rate_decay = "constant"
    config.data.augment = "flips"
    config.data.grey_jitter = 0.0
    config.data.same_reservoir_probability = 0.0
    config.data.metadata_label = "measurements"
    config.ema_decay = 0.0
    config.test_time_orientations = 1
    return config


def get_config() -> ml_collections.ConfigDict:
    config = use_original_objective(default.get_config())
    config.learning_rate = 3e-4
    return config
