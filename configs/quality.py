"""The default's recipe at 128² for 600 steps: the quality it reaches within an hour on 2 CPU cores.

python -m rockir_jax.train --config configs/quality.py --workdir runs/quality_config
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.image_size = 128
    config.num_train_steps = 600
    config.warmup_steps = 60  # 10 % of the steps, as the default
    config.eval_every_steps = 200
    config.checkpoint_every_steps = 200
    return config
