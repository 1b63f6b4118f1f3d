"""The training loop of a DSNN or Siamese baseline, with validation and checkpoints.

Config → data (validated, cached as ArrayRecord) → mesh → state (fresh, or resumed from the run's latest
checkpoint) → the sharded train step, validating every ``eval_every_steps``. Training again in the same
folder resumes and ends with the parameters an uninterrupted run would have.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from rockir_jax import data, run_folder, runtime, sharding
from rockir_jax.jsonio import json_text
from rockir_jax.models import build_model, resnet_params
from rockir_jax.retrieval.embed import ORIENTATIONS, embed_source, make_embed_step, validation_metrics
from rockir_jax.retrieval.evaluation import usable_k
from rockir_jax.retrieval.metrics import best_checkpoint_metric
from rockir_jax.training import device_layout, losses
from rockir_jax.training import step as step_lib
from rockir_jax.training.checkpoint import Checkpointer
from rockir_jax.training.metrics_log import MetricsLog
from rockir_jax.training.optim import adamw_amsgrad, learning_rate_schedule

log = logging.getLogger(__name__)

_AT_LEAST_ONE = (
    "global_batch_size",
    "log_every_steps",
    "eval_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "eval_pair_batches",
    "eval_batch_size",
    "retrieval_k",
    "image_size",
)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; no checkpoint of that state was written."""


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises a ValueError naming every setting out of range (before any data is read)."""
    problems = [f"{key}={config[key]} must be at least 1" for key in _AT_LEAST_ONE if config[key] < 1]
    if config.num_epochs <= 0 and config.num_train_steps < 1:
        problems.append(f"num_train_steps={config.num_train_steps} must be at least 1 (or set num_epochs)")
    if not config.learning_rate > 0:
        problems.append(f"learning_rate={config.learning_rate} must be positive")
    if config.warmup_steps < 0 or config.weight_decay < 0 or config.num_devices < 0:
        problems.append("warmup_steps, weight_decay and num_devices must not be negative")
    orientations = config.get("test_time_orientations", 1)
    if orientations not in ORIENTATIONS:
        problems.append(f"test_time_orientations={orientations} must be one of {ORIENTATIONS}")
    if problems:
        raise ValueError("config: " + "; ".join(problems))


def _loss_fn(config: ml_collections.ConfigDict, train: data.SplitSource) -> step_lib.LossFn:
    if config.model != "dsnn":
        return losses.siamese_loss
    target_scale = None
    if config.standardize_targets:
        target_scale = tuple(float(s) for s in np.nanstd(train.targets, axis=0))
        log.info(
            "regression errors scaled by the training targets' std: %s",
            ", ".join(f"{s:.4g}" for s in target_scale),
        )
    return functools.partial(
        losses.dsnn_loss,
        weights=config.loss_weights.to_dict(),
        target_scale=target_scale,
        temperature=config.embedding_temperature,
        axis_name=sharding.DATA_AXIS,
    )


def _initial_variables(model, config: ml_collections.ConfigDict) -> dict[str, Any]:
    variables = step_lib.init_variables(model, jax.random.key(config.seed), config.image_size)
    variables = jax.tree.map(np.asarray, variables)
    if config.pretrained:
        backbone = resnet_params.load_variables(config.pretrained)
        variables = resnet_params.with_pretrained_backbones(variables, backbone, source=config.pretrained)
    return variables


def dataset_index(config: ml_collections.ConfigDict) -> data.DatasetIndex:
    """The config's validated data set (raising :class:`data.DataValidationError`), its training split
    cut to ``data.train_samples_per_reservoir`` samples per reservoir when that is set."""
    index = data.index_dataset(
        config.data.root,
        config.data.metadata,
        extra_targets=tuple(config.data.extra_targets),
        disjoint_samples=config.data.disjoint_samples,
    )
    if config.data.train_samples_per_reservoir:
        index = data.limit_samples_per_reservoir(index, "train", config.data.train_samples_per_reservoir)
    return index


def _open_splits(config: ml_collections.ConfigDict) -> dict[str, data.SplitSource]:
    """Validates the data set, builds or finds its image cache and opens the splits."""
    index = dataset_index(config)
    workers = config.data.prepare_workers or runtime.cpu_count()
    cache = data.build_image_cache(index, config.image_size, config.data.cache_dir, workers=workers)
    return {split: data.load_split(cache, split) for split in ("train", "val") if index.splits.get(split)}


def validation_k(config: ml_collections.ConfigDict, sources: Mapping[str, data.SplitSource]) -> int:
    """``retrieval_k`` capped at the validation ranking's length (val images among train + val), with a
    note when it is."""
    n_images = sum(len(sources[split]) for split in ("train", "val") if split in sources)
    k = usable_k(n_images, config.retrieval_k)
    if k < config.retrieval_k and "val" in sources:
        log.info("retrieval_k=%d is capped at %d: validation ranks %d other images", config.retrieval_k, k, k)
    return k


class Validator:
    """Validation: loss on fixed pairs of the val split; retrieval of val images among train + val."""

    def __init__(self, config, mesh, model, loss_fn, sources: Mapping[str, data.SplitSource], k: int):
        self.config, self.mesh, self.sources, self.k = config, mesh, sources, k
        self.eval_step = step_lib.make_eval_step(mesh, loss_fn)
        # One orientation: validation runs often inside the training budget; evaluation, search and
        # the page average config.test_time_orientations.
        self.embed_step = make_embed_step(mesh, model)

    def __call__(self, state: step_lib.TrainState) -> dict[str, float]:
        config, val = self.config, self.sources["val"]
        pairs = data.train_iterator(
            val,
            global_batch_size=config.global_batch_size,
            seed=config.seed + 1,
            metadata_label=config.data.metadata_label,
        )
        pair_metrics = [
            jax.device_get(self.eval_step(state, sharding.shard_batch(next(pairs), self.mesh)))
            for _ in range(config.eval_pair_batches)
        ]
        metrics = {f"{k}": float(np.mean([m[k] for m in pair_metrics])) for k in pair_metrics[0]}
        variables = {"params": state.eval_params(), "batch_stats": state.batch_stats}
        embed = functools.partial(
            embed_source, self.embed_step, variables, mesh=self.mesh, batch_size=config.eval_batch_size
        )
        train_embedded, val_embedded = embed(self.sources["train"]), embed(val)
        database = {k: np.concatenate([train_embedded[k], val_embedded[k]]) for k in val_embedded}
        offset = len(train_embedded["embedding"])
        return metrics | validation_metrics(val_embedded, database, offset, k=self.k)


def training_length(config: ml_collections.ConfigDict, num_train_images: int) -> tuple[int, int]:
    """(training steps, checkpoint interval in steps) of ``config``.

    With ``num_epochs`` > 0 the run lasts ``ceil(num_epochs · num_train_images / global_batch_size)``
    steps (an epoch of the original is as many pairs as training images) and, with
    ``checkpoint_every_epochs`` > 0, checkpoints every ``ceil(checkpoint_every_epochs · images /
    batch)`` steps; otherwise ``num_train_steps`` and ``checkpoint_every_steps``.
    """
    steps_for = lambda epochs: max(1, math.ceil(epochs * num_train_images / config.global_batch_size))
    if config.num_epochs <= 0:
        return config.num_train_steps, config.checkpoint_every_steps
    every = config.checkpoint_every_epochs
    return steps_for(config.num_epochs), steps_for(every) if every > 0 else config.checkpoint_every_steps


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> step_lib.TrainState:
    """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint); returns the final state."""
    check_config(config)
    workdir = Path(workdir)
    is_chief = jax.process_index() == 0
    layout = device_layout.plan(
        jax.devices(),
        config.global_batch_size,
        requested=config.num_devices,
        branch_parallel=config.branch_parallel and config.model == "dsnn",
    )
    if is_chief:
        log.info("training on %s", layout.describe())
        if layout.data_mesh.devices.size < len(jax.devices()) and not config.num_devices:
            log.info(
                "(of %d devices: the most that split a batch of %d evenly)",
                len(jax.devices()),
                config.global_batch_size,
            )
    sources = _open_splits(config)
    num_train_steps, checkpoint_every = training_length(config, len(sources["train"]))
    retrieval_k = validation_k(config, sources)
    if is_chief:
        workdir.mkdir(parents=True, exist_ok=True)
        run_folder.config_path(workdir).write_text(json_text(config.to_dict()))
        if config.num_epochs > 0:
            log.info(
                "%d epochs of %d pairs: %d steps of %d, a checkpoint every %d steps",
                config.num_epochs,
                len(sources["train"]),
                num_train_steps,
                config.global_batch_size,
                checkpoint_every,
            )

    model = build_model(
        config.model,
        config.backbone,
        num_extra_targets=len(config.data.extra_targets),
        axis_name=sharding.DATA_AXIS,
        dtype=jnp.dtype(config.dtype),
        conv_algorithm=config.conv_algorithm,
    )
    loss_fn = _loss_fn(config, sources["train"])
    scale = layout.data_mesh.devices.size if config.scale_learning_rate_by_devices else 1
    learning_rate = learning_rate_schedule(
        config.learning_rate * scale,
        num_train_steps,
        warmup_steps=config.warmup_steps,
        decay=config.learning_rate_decay,
    )
    tx = adamw_amsgrad(learning_rate, weight_decay=config.weight_decay)
    state = step_lib.create_train_state(
        model, _initial_variables(model, config), tx, ema_decay=config.ema_decay
    )
    train_iter = data.train_iterator(
        sources["train"],
        global_batch_size=config.global_batch_size,
        seed=config.seed,
        num_workers=config.data.num_workers,
        augment=config.data.augment,
        grey_jitter=config.data.grey_jitter,
        same_reservoir_probability=config.data.same_reservoir_probability,
        metadata_label=config.data.metadata_label,
    )
    runtime.wait_for_all_processes("data and initial state ready")
    checkpointer = Checkpointer(
        run_folder.checkpoints_dir(workdir),
        keep=config.keep_checkpoints,
        best_metric=best_checkpoint_metric(retrieval_k),
    )
    metrics_log = MetricsLog(workdir)
    if checkpointer.latest_step() is not None:
        state = checkpointer.restore(state, train_iter, layout.data_mesh)
        log.info("resumed from step %d", int(state.step))
    if is_chief:
        metrics_log.truncate_after(int(state.step))
    state = layout.place(state)

    train_step = layout.train_step(model, loss_fn)
    validate = None
    if "val" in sources:
        validate = Validator(config, layout.data_mesh, model, loss_fn, sources, retrieval_k)
    else:
        log.warning("no val split in %s: training without validation", config.data.root)

    def evaluate_and_log(step: int) -> dict[str, float] | None:
        if validate is None:
            return None
        metrics = validate(layout.canonical(state))
        if is_chief:
            metrics_log.write(step, "val", metrics)
            metrics_log.plot()
        return metrics

    first_step = int(state.step)
    if first_step == 0:
        evaluate_and_log(0)
    progress = tqdm(
        total=num_train_steps, initial=first_step, desc="train", unit="step", disable=not is_chief
    )
    window: list[dict[str, float]] = []
    window_start = time.perf_counter()
    step = first_step
    try:
        for step in range(first_step + 1, num_train_steps + 1):
            batch = layout.shard_batch(next(train_iter))
            state, metrics = train_step(state, batch)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not np.isfinite(metrics["loss"]):
                checkpointer.wait()
                raise NonFiniteLossError(
                    f"non-finite loss ({metrics['loss']}) at step {step}: stopping without saving this "
                    f"state; the latest checkpoint is step {checkpointer.latest_step()}. Terms: {metrics}"
                )
            window.append(metrics)
            progress.update()
            if step % config.log_every_steps == 0 or step == num_train_steps:
                elapsed = time.perf_counter() - window_start
                summary = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
                summary |= {
                    "learning_rate": float(
                        learning_rate(step - 1) if callable(learning_rate) else learning_rate
                    ),
                    "pairs_per_second": len(window) * config.global_batch_size / elapsed,
                }
                progress.set_postfix(
                    loss=f"{summary['loss']:.4f}", pairs_s=f"{summary['pairs_per_second']:.1f}"
                )
                if is_chief:
                    metrics_log.write(step, "train", summary)
                window, window_start = [], time.perf_counter()
            eval_metrics = None
            if step % config.eval_every_steps == 0 or step == num_train_steps:
                eval_metrics = evaluate_and_log(step)
            if eval_metrics or step % checkpoint_every == 0 or step == num_train_steps:
                checkpointer.save(layout.canonical(state), train_iter, eval_metrics)
    except KeyboardInterrupt:
        # Everything up to the last completed step is kept: the next run resumes from here.
        if step > first_step and checkpointer.latest_step() != step:
            checkpointer.save(layout.canonical(state), train_iter)
        raise
    finally:
        progress.close()
        checkpointer.wait()
        metrics_log.close()
    checkpointer.close()
    if is_chief:
        metrics_log.plot()
        log.info(
            "done: %s, %s, checkpoints in %s",
            metrics_log.path,
            metrics_log.curves_path,
            run_folder.checkpoints_dir(workdir),
        )
    return layout.canonical(state)
