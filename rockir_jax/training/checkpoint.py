"""orbax checkpoints of a training run (train state + grain iterator state, latest N plus the best),
and exported models (one directory to hand to someone else).

A checkpoint holds two items: ``state`` (step, params, batch_stats, optimiser state) and ``data``
(the grain iterator's position). orbax writes each step into a temporary directory and renames it
when complete, so a run killed mid-write leaves the previous checkpoint as the latest restorable one.

Every read places the arrays on the reading process's devices (or on the host), never on the shardings
recorded at save time: a checkpoint written on N devices, another platform or several processes opens
anywhere.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh
from orbax.checkpoint import checkpoint_managers

from rockir_jax import run_folder, sharding
from rockir_jax.configuration import load_config
from rockir_jax.jsonio import json_text, read_versioned
from rockir_jax.models import resnet_params
from rockir_jax.training.step import TrainState


def _state_tree(state: TrainState) -> dict[str, Any]:
    tree = {
        "step": state.step,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
    }
    if state.ema_params is not None:
        tree["ema_params"] = state.ema_params
    return tree


class Checkpointer:
    """Saves and restores a run's checkpoints in ``directory``.

    Keeps the latest ``keep`` checkpoints and, with a ``best_metric`` (a key of the validation metrics
    saved with checkpoints, e.g. ``"reservoir/map@10"``), also the one where it is highest.
    """

    def __init__(self, directory: str | Path, keep: int = 3, best_metric: str | None = None):
        policies = [checkpoint_managers.LatestN(n=keep)]
        if best_metric is not None:
            policies.append(
                checkpoint_managers.BestN(
                    get_metric_fn=lambda metrics: metrics[best_metric],
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        policy = checkpoint_managers.AnyPreservationPolicy(policies)
        options = ocp.CheckpointManagerOptions(
            create=True, cleanup_tmp_directories=True, preservation_policy=policy
        )
        self.best_metric = best_metric
        self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(
        self,
        state: TrainState,
        data_iterator: grain.DatasetIterator,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Starts an asynchronous save at ``state.step`` (device buffers are copied before it returns)."""
        step = int(state.step)
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_state_tree(state)),
                data=grain.checkpoint.CheckpointSave(data_iterator),
            ),
            metrics={k: float(v) for k, v in metrics.items()} if metrics else None,
        )

    def restore(self, state: TrainState, data_iterator: grain.DatasetIterator, mesh: Mesh) -> TrainState:
        """The latest checkpoint into ``state``'s structure, replicated on ``mesh``, and ``data_iterator``
        (in place).

        The arrays go onto ``mesh``'s devices whatever devices saved them: any count, another
        platform, another number of processes. The iterator's position does not depend on devices.
        """
        step = self.manager.latest_step()
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(sharding.replicated_targets(_state_tree(state), mesh)),
                data=grain.checkpoint.CheckpointRestore(data_iterator),
            ),
        )["state"]
        return state.replace(**restored)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def restore_variables(directory: str | Path, step: int | None = None) -> tuple[dict[str, Any], int]:
    """``({"params", "batch_stats"}, step)`` of a run's checkpoint (default: the best, else the latest),
    as host numpy arrays whatever devices saved them; the optimiser state is not read. A run that kept
    a moving average of its parameters gives that average as ``params``."""
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no checkpoint directory")
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    # The plain pytree handler reads a subtree (partial_restore) with per-leaf restore arguments.
    handlers = {"state": ocp.PyTreeCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()}
    with ocp.CheckpointManager(directory, options=options, item_handlers=handlers) as manager:
        if step is None:
            step = manager.best_step() if manager.best_step() is not None else manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"{directory}: no checkpoint in it")
        steps = manager.all_steps()
        if step not in steps:
            raise FileNotFoundError(f"{directory}: no checkpoint of step {step} (it has {list(steps)})")
        saved = manager.item_metadata(step)["state"].tree
        params_key = "ema_params" if "ema_params" in saved else "params"
        item = {params_key: saved[params_key], "batch_stats": saved["batch_stats"]}
        args = ocp.args.PyTreeRestore(
            item=item, restore_args=sharding.host_restore_args(item), partial_restore=True
        )
        restored = manager.restore(step, args=ocp.args.Composite(state=args))["state"]
    return {"params": restored[params_key], "batch_stats": restored["batch_stats"]}, step


MODEL_FORMAT = "rockir_jax.model"
MODEL_VERSION = 1
MODEL_FILE = "model.json"
VARIABLES_DIR = "variables"


def variables_fingerprint(variables: Any) -> str:
    """SHA-256 of the variables' names, dtypes, shapes and values: equal for equal weights, wherever
    they were saved or loaded."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
        leaf = np.ascontiguousarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)} {leaf.dtype.str} {leaf.shape}\n".encode())
        digest.update(leaf.tobytes())
    return digest.hexdigest()


def export_model(workdir: str | Path, out: str | Path, step: int | None = None) -> Path:
    """Writes a run's trained model as one self-contained directory ``out`` and returns it.

    ``out`` holds ``variables/`` (params and BatchNorm statistics, orbax, host arrays),
    ``config.json`` (the run's config, to rebuild the model) and ``model.json`` (format, model,
    backbone, image size, step and the variables' SHA-256). The checkpoint is the run's best, else its
    latest, or ``step``; the optimiser state is left out. ``out`` must not exist or be empty.
    """
    workdir, out = Path(workdir), Path(out).absolute()
    config_path = run_folder.config_path(workdir)
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: no such file (is {workdir} a training run?)")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: already exists and is not empty")
    config = load_config(config_path)
    variables, step = restore_variables(run_folder.checkpoints_dir(workdir), step)
    manifest = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "model": config.model,
        "backbone": config.backbone,
        "image_size": config.image_size,
        "step": int(step),
        "variables_sha256": variables_fingerprint(variables),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside ``out`` and renamed into place: an interrupted export leaves no half model.
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        resnet_params.save_variables(variables, staging / VARIABLES_DIR)
        shutil.copyfile(config_path, run_folder.config_path(staging))
        (staging / MODEL_FILE).write_text(json_text(manifest))
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def read_model_dir(model_dir: str | Path) -> tuple[dict[str, Any], ml_collections.ConfigDict, dict[str, Any]]:
    """``(variables, config, manifest)`` of a directory written by :func:`export_model`, variables as
    host numpy arrays, checked against the manifest's format, version and SHA-256."""
    model_dir = Path(model_dir)
    manifest_path = model_dir / MODEL_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: no such file (export a model with rockir-export)")
    manifest = read_versioned(manifest_path, MODEL_FORMAT, MODEL_VERSION)
    config = load_config(run_folder.config_path(model_dir))
    for key in ("model", "backbone", "image_size"):
        if manifest.get(key) != config.get(key):
            raise ValueError(
                f"{manifest_path}: {key} is {manifest.get(key)!r} but "
                f"{run_folder.config_path(model_dir)} says {config.get(key)!r}"
            )
    variables = resnet_params.load_variables(model_dir / VARIABLES_DIR)
    if variables_fingerprint(variables) != manifest.get("variables_sha256"):
        raise ValueError(f"{model_dir / VARIABLES_DIR}: the weights do not match {manifest_path}'s SHA-256")
    return variables, config, manifest
