"""orbax checkpoints of a training run: train state + grain iterator state, latest N plus the best.

A checkpoint holds two items: ``state`` (step, params, batch_stats, optimiser state) and ``data``
(the grain iterator's position). orbax writes each step into a temporary directory and renames it
when complete, so a run killed mid-write leaves the previous checkpoint as the latest restorable one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from rockir_jax.training.step import TrainState


def _state_tree(state: TrainState) -> dict[str, Any]:
    return {
        "step": state.step,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
    }


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

    def restore(self, state: TrainState, data_iterator: grain.DatasetIterator) -> TrainState:
        """The latest checkpoint into ``state``'s structure and ``data_iterator`` (in place)."""
        step = self.manager.latest_step()
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state_tree(state))
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract),
                data=grain.checkpoint.CheckpointRestore(data_iterator),
            ),
        )["state"]
        return state.replace(**restored)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def restore_variables(directory: str | Path, step: int | None = None) -> tuple[dict[str, Any], int]:
    """``({"params", "batch_stats"}, step)`` of a run's checkpoint (default: the best, else the latest)."""
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no checkpoint directory")
    with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True)) as manager:
        if step is None:
            step = manager.best_step() if manager.best_step() is not None else manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"{directory}: no checkpoint in it")
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    return {"params": state["params"], "batch_stats": state["batch_stats"]}, step
