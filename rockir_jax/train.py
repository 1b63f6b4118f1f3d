"""Training and validation of a DSNN or Siamese baseline: ``python -m rockir_jax.train``.

    python -m rockir_jax.train --config configs/default.py --workdir runs/default [--config.KEY=VALUE]

Config → data (validated, cached as ArrayRecord) → mesh → state (fresh, or resumed from the latest
checkpoint in ``<workdir>/checkpoints``) → the sharded train step, with validation (pair loss,
retrieval mAP, metadata errors) every ``eval_every_steps``. Re-running the same command resumes; the
resumed run ends with the parameters an uninterrupted run would have.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from tqdm import tqdm

from rockir_jax import data, runtime, sharding
from rockir_jax.configuration import expand_paths
from rockir_jax.models import build_model, resnet_params
from rockir_jax.retrieval.embed import embed_source, make_embed_step, validation_metrics
from rockir_jax.retrieval.metrics import best_checkpoint_metric
from rockir_jax.training import layout as layout_lib
from rockir_jax.training import losses
from rockir_jax.training import step as step_lib
from rockir_jax.training.checkpoint import Checkpointer
from rockir_jax.training.metrics_log import MetricsLog
from rockir_jax.training.optim import adamw_amsgrad, learning_rate_schedule

# Not __name__: run as ``python -m`` this module is __main__, outside the package's logger.
log = logging.getLogger("rockir_jax.train")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; no checkpoint of that state was written."""


def _loss_fn(config: ml_collections.ConfigDict, train: data.SplitSource) -> step_lib.LossFn:
    if config.model != "dsnn":
        return losses.siamese_loss
    target_scale = None
    if config.standardize_targets:
        target_scale = tuple(float(s) for s in np.nanstd(train.targets, axis=0))
        log.info("regression errors scaled by the training targets' std: %s", target_scale)
    weights = config.loss_weights.to_dict()
    return functools.partial(losses.dsnn_loss, weights=weights, target_scale=target_scale)


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


def _prepare_data(config: ml_collections.ConfigDict) -> dict[str, data.SplitSource]:
    """Validates the data set and opens its splits."""
    index = dataset_index(config)
    workers = config.data.get("prepare_workers", 0) or runtime.cpu_count()
    cache = data.prepare(index, config.image_size, config.data.cache_dir, workers=workers)
    return {split: data.load_split(cache, split) for split in ("train", "val") if index.splits.get(split)}


class Validator:
    """Validation: loss on fixed pairs of the val split; retrieval of val images among train + val."""

    def __init__(self, config, mesh, model, loss_fn, sources: Mapping[str, data.SplitSource]):
        self.config, self.mesh, self.sources = config, mesh, sources
        self.eval_step = step_lib.make_eval_step(mesh, loss_fn)
        self.embed_step = make_embed_step(mesh, model)

    def __call__(self, state: step_lib.TrainState) -> dict[str, float]:
        config, val = self.config, self.sources["val"]
        pairs = data.train_iterator(
            val,
            global_batch_size=config.global_batch_size,
            seed=config.seed + 1,
            metadata_label=config.data.get("metadata_label", "measurements"),
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
        return metrics | validation_metrics(val_embedded, database, offset, k=config.retrieval_k)


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


def _save_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
    (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=str) + "\n")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> step_lib.TrainState:
    """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint); returns the final state."""
    workdir = Path(workdir)
    is_chief = jax.process_index() == 0
    layout = layout_lib.plan(
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
    sources = _prepare_data(config)
    num_train_steps, checkpoint_every = training_length(config, len(sources["train"]))
    if is_chief:
        workdir.mkdir(parents=True, exist_ok=True)
        _save_config(config, workdir)
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
        model, _initial_variables(model, config), tx, ema_decay=config.get("ema_decay", 0.0)
    )
    train_iter = data.train_iterator(
        sources["train"],
        global_batch_size=config.global_batch_size,
        seed=config.seed,
        num_workers=config.data.num_workers,
        augment=config.data.augment,
        grey_jitter=config.data.grey_jitter,
        same_reservoir_probability=config.data.same_reservoir_probability,
        metadata_label=config.data.get("metadata_label", "measurements"),
    )
    runtime.wait_for_all_processes("data and initial state ready")
    checkpointer = Checkpointer(
        workdir / "checkpoints",
        keep=config.keep_checkpoints,
        best_metric=best_checkpoint_metric(config.retrieval_k),
    )
    metrics_log = MetricsLog(workdir)
    if checkpointer.latest_step() is not None:
        state = checkpointer.restore(state, train_iter, layout.data_mesh)
        log.info("resumed from step %d", int(state.step))
    if is_chief:
        metrics_log.truncate_after(int(state.step))
    state = layout.place(state)

    train_step = layout.train_step(model, loss_fn)
    validate = Validator(config, layout.data_mesh, model, loss_fn, sources) if "val" in sources else None
    if validate is None:
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
    checkpointer.close()
    if is_chief:
        metrics_log.plot()
        log.info(
            "done: %s, %s, checkpoints in %s",
            workdir / "metrics.jsonl",
            metrics_log.curves_path,
            workdir / "checkpoints",
        )
    return layout.canonical(state)


_CONFIG = config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, plots and log.txt.")
_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Also show other libraries' log lines on the console (always in <workdir>/log.txt)."
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    workdir = Path(_WORKDIR.value).expanduser()
    runtime.configure_logging(workdir, _VERBOSE.value)
    runtime.set_up_command_line_run()
    runtime.maybe_initialize_distributed()
    try:
        train_and_evaluate(expand_paths(_CONFIG.value), workdir)
    except data.DataValidationError as err:
        # Every process validates the same files and fails alike; process 0 reports for all.
        if jax.process_index() == 0:
            print(f"error: the data set is not usable, nothing was trained:\n{err}", file=sys.stderr)
        else:
            print("error: the data set is not usable (process 0 reports why)", file=sys.stderr)
        sys.exit(2)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
