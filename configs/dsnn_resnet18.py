"""The paper's DSNN-ResNet-18: 224², AdamW-amsgrad at 1e-5 per device, ImageNet backbones, 1000 epochs.

As the original: an epoch is as many pairs as training images, 1000 epochs, a checkpoint every 10
epochs (the released weights are epoch 920's). It differs in that every step is a full batch of 64
(the original's last batch of an epoch was smaller, and its batch size was a command-line choice) and
only the last ``keep_checkpoints`` checkpoints and the best are kept.

Port the weights first: ``python scripts/port_torchvision_weights.py --arch resnet18 --download
--out weights/resnet18``, then ``python -m rockir_jax.train --config configs/dsnn_resnet18.py
--workdir runs/dsnn_resnet18 --config.data.root=<your data> --config.data.metadata=<your csv>``.
"""

from configs import default, original_recipe


def get_config():
    config = default.get_config()
    config.pretrained = "weights/resnet18"
    config.image_size = 224
    config.global_batch_size = 64
    config.num_epochs = 1000
    config.checkpoint_every_epochs = 10
    config.learning_rate = 1e-5
    config.scale_learning_rate_by_devices = True
    config.data.num_workers = 4
    config.eval_every_steps = 1000
    config.keep_checkpoints = 3
    return original_recipe.use_original_objective(config)
