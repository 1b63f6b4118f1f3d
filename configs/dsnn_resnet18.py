"""The paper's DSNN-ResNet-18: 224², AdamW-amsgrad at 1e-5 per device, ImageNet backbones.

Port the weights first: ``python scripts/port_torchvision_weights.py --arch resnet18 --download
--out weights/resnet18``, then ``python -m rockir_jax.train --config configs/dsnn_resnet18.py
--workdir runs/dsnn_resnet18 --config.data.root=<your data> --config.data.metadata=<your csv>``.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.pretrained = "weights/resnet18"
    config.image_size = 224
    config.global_batch_size = 64
    config.num_train_steps = 20_000
    config.learning_rate = 1e-5
    config.scale_learning_rate_by_devices = True
    config.data.num_workers = 4
    config.eval_every_steps = 1000
    config.checkpoint_every_steps = 500
    config.keep_checkpoints = 3
    return config
