"""Default: DSNN-ResNet-18 on the bundled synthetic digital rocks, sized for 2 CPU cores (< 10 min).

python -m rockir_jax.train --config configs/default.py --workdir runs/default
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = "dsnn"  # dsnn | siamese
    config.backbone = "resnet18"  # resnet18 | resnet34
    config.pretrained = ""  # a ported ImageNet backbone (rockir-port), or ""
    config.image_size = 128
    config.dtype = "float32"  # computation dtype; bfloat16 on GPU/TPU (params stay float32)
    # 3×3 convolutions: auto = Winograd F(2×2, 3×3) where faster (float32 on CPU, ≥ 128 channels) | direct
    config.conv_algorithm = "auto"

    config.global_batch_size = 16
    config.num_train_steps = 150
    # > 0: train for this many epochs of ceil(train images / global_batch_size) steps instead, as the
    # original did (one epoch = as many pairs as training images); num_train_steps is then ignored.
    config.num_epochs = 0
    config.learning_rate = 3e-4
    # The original used lr × number of GPUs; this multiplies learning_rate by the JAX device count
    # (devices that train; on a CPU host with emulated devices, that count, e.g. one per core).
    config.scale_learning_rate_by_devices = False
    config.weight_decay = 1e-5
    config.seed = 0
    config.num_devices = 0  # devices to train on; 0 = the most that split the batch evenly
    # DSNN: the image and rock backbones on separate halves of an even device count (branch parallel);
    # False, or an odd count, runs both on every device (data parallel).
    config.branch_parallel = True
    # DSNN loss: fused·BCE(p) + image·BCE(p_img) + metadata·BCE(p_rock) + regression·SmoothL1
    config.loss_weights = ml_collections.ConfigDict(dict(fused=1.0, image=1.0, metadata=1.0, regression=10.0))

    config.data = ml_collections.ConfigDict()
    config.data.root = "datasets/synthetic_rocks"
    config.data.metadata = "datasets/synthetic_rocks/metadata.csv"
    config.data.cache_dir = "~/.cache/rockir_jax"
    config.data.num_workers = 0  # grain worker processes for the training pairs
    # processes decoding, serialising and compressing the image cache's shards (0 = one per core)
    config.data.prepare_workers = 0
    config.data.extra_targets = ()  # further numeric CSV columns to regress
    # Refuse a sample with slices in several splits (default: allowed, with a warning).
    config.data.disjoint_samples = False

    config.log_every_steps = 10
    config.eval_every_steps = 50
    config.checkpoint_every_steps = 50
    config.checkpoint_every_epochs = 0  # > 0 (with num_epochs): replaces checkpoint_every_steps
    config.keep_checkpoints = 2
    config.eval_pair_batches = 4  # fixed validation pairs for the validation loss
    config.eval_batch_size = 64  # images per embedding batch
    config.retrieval_k = 10  # cut-off of the validation's retrieval metrics; reservoir mAP@k picks the best
    return config
