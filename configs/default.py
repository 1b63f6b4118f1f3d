"""Default: DSNN-ResNet-18 on the bundled synthetic digital rocks, sized for 2 CPU cores.

The recipe: standardised regression targets, a supervised contrastive term on the retrieval embeddings,
all 8 orientations in training and averaged at test time, a warm-up and cosine decay from 1e-3, 96²
images so that 420 steps fit 10 minutes on 2 cores (what each part does: docs/quality.md).
``configs/original_recipe.py`` is the same run with the original RockIR's objective.

python -m rockir_jax.train --config configs/default.py --workdir runs/default
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = "dsnn"  # dsnn | siamese
    config.backbone = "resnet18"  # resnet18 | resnet34
    config.pretrained = ""  # a ported ImageNet backbone (rockir-port), or ""
    config.image_size = 96
    config.dtype = "float32"  # computation dtype; bfloat16 on GPU/TPU (params stay float32)
    # 3×3 convolutions: auto = Winograd F(2×2, 3×3) where faster (float32 on CPU, ≥ 128 channels) | direct
    config.conv_algorithm = "auto"

    config.global_batch_size = 16
    config.num_train_steps = 420
    # > 0: train for this many epochs of ceil(train images / global_batch_size) steps instead, as the
    # original did (one epoch = as many pairs as training images); num_train_steps is then ignored.
    config.num_epochs = 0
    config.learning_rate = 1e-3
    # The original used lr × number of GPUs; this multiplies learning_rate by the JAX device count
    # (devices that train; on a CPU host with emulated devices, that count, e.g. one per core).
    config.scale_learning_rate_by_devices = False
    config.weight_decay = 1e-5
    config.warmup_steps = 42  # linear warm-up from 0 to learning_rate
    config.learning_rate_decay = "cosine"  # constant | cosine (to 0 at the last step)
    # > 0: validate and export an exponential moving average of the weights, with this decay (its
    # first steps faster: min(decay, (1 + step) / (10 + step))); 0: the weights as trained.
    config.ema_decay = 0.0
    config.seed = 0
    config.num_devices = 0  # devices to train on; 0 = the most that split the batch evenly
    # DSNN: the image and rock backbones on separate halves of an even device count (branch parallel);
    # False, or an odd count, runs both on every device (data parallel).
    config.branch_parallel = True
    # DSNN loss: fused·BCE(p) + image·BCE(p_img) + metadata·BCE(p_rock) + regression·SmoothL1
    # + embedding·SupCon (the original: 1, 1, 1, 10 on raw targets, no embedding term)
    config.loss_weights = ml_collections.ConfigDict(
        dict(fused=1.0, image=1.0, metadata=1.0, regression=1.0, embedding=1.0)
    )
    # the embedding term: supervised contrastive on the retrieval embeddings, reservoirs as labels
    config.embedding_temperature = 0.1
    # Divide each regression target's error by its std over the training images, so that porosity and
    # log-permeability weigh alike (the original: False).
    config.standardize_targets = True

    config.data = ml_collections.ConfigDict()
    config.data.root = "datasets/synthetic_rocks"
    config.data.metadata = "datasets/synthetic_rocks/metadata.csv"
    config.data.cache_dir = "~/.cache/rockir_jax"
    config.data.num_workers = 0  # grain worker processes for the training pairs
    # processes decoding, serialising and compressing the image cache's shards (0 = one per core)
    config.data.prepare_workers = 0
    # flips (the original: horizontal, vertical) | dihedral (also transposed: all 8 orientations)
    config.data.augment = "dihedral"
    config.data.grey_jitter = 0.0  # > 0: per-image contrast × (1 ± j) and level ± j, uniform
    # > 0: this share of the training pairs takes image 1 from image 0's reservoir instead of from
    # anywhere (at most 0.5: half the pairs share a sample, as in the original).
    config.data.same_reservoir_probability = 0.0
    # The metadata branch's label: measurements (porosity and permeability within 10 %, the original)
    # | reservoir (the same reservoir, the CSV's rock label)
    config.data.metadata_label = "measurements"
    config.data.extra_targets = ()  # further numeric CSV columns to regress
    # Refuse a sample with slices in several splits (default: allowed, with a warning).
    config.data.disjoint_samples = False
    # > 0: train on only the first N samples (by name) of each reservoir, e.g. for few-shot curves.
    config.data.train_samples_per_reservoir = 0

    config.log_every_steps = 10
    config.eval_every_steps = 100
    config.checkpoint_every_steps = 100
    config.checkpoint_every_epochs = 0  # > 0 (with num_epochs): replaces checkpoint_every_steps
    config.keep_checkpoints = 2
    config.eval_pair_batches = 4  # fixed validation pairs for the validation loss
    config.eval_batch_size = 64  # images per embedding batch
    config.retrieval_k = 10  # cut-off of the validation's retrieval metrics; reservoir mAP@k picks the best
    # Evaluation, search and the page average each image's embedding and prediction over its 8
    # orientations (8) or take it as it is (1); validation during training takes it as it is.
    config.test_time_orientations = 8
    return config
