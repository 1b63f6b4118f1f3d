"""Trained models ready to embed: from a run's checkpoints and config, or a (ported) vanilla backbone.

:func:`load_model` is the one entry point that evaluation, search, comparison and the search page share.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rockir_jax import run_folder
from rockir_jax.configuration import load_config
from rockir_jax.data.metadata import TargetSpec
from rockir_jax.models import build_model, resnet_params
from rockir_jax.retrieval.embed import ORIENTATIONS
from rockir_jax.training.checkpoint import read_model_dir, restore_variables, variables_fingerprint

DEFAULT_TARGETS = TargetSpec()


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model ready to embed: module, variables, input size, test-time orientations and an identity.

    ``identity`` is stored in every index the model builds; a saved index is only searched with
    queries embedded by a model of the same identity. ``orientations`` (1 or 8) is how many of an
    image's orientations its embedding and prediction average (:func:`rockir_jax.retrieval.embed.
    make_embed_step`); the identity names it when it is not 1.
    """

    module: nn.Module
    variables: Mapping[str, Any]
    image_size: int
    identity: dict[str, Any]
    target_spec: TargetSpec = DEFAULT_TARGETS
    orientations: int = 1


def _trained(config: ml_collections.ConfigDict, variables: Mapping[str, Any], step: int) -> LoadedModel:
    """The DSNN or Siamese model of ``config`` around trained ``variables``.

    Its identity is the architecture, input size, step and the weights' SHA-256, not where they were
    read from: a run and its export (or a moved run) build interchangeable indexes.
    """
    extra = tuple(config.data.extra_targets)
    module = build_model(
        config.model,
        config.backbone,
        num_extra_targets=len(extra),
        dtype=jnp.dtype(config.dtype),
        conv_algorithm=config.get("conv_algorithm", "auto"),  # runs saved before the option had none
    )
    identity = {
        "model": config.model,
        "backbone": config.backbone,
        "image_size": config.image_size,
        "step": int(step),
        "variables_sha256": variables_fingerprint(variables),
    }
    orientations = int(config.get("test_time_orientations", 1))  # runs saved before the option: 1
    identity |= _orientations(orientations)
    spec = TargetSpec(extra=extra)
    return LoadedModel(module, variables, config.image_size, identity, spec, orientations)


def _orientations(orientations: int) -> dict[str, int]:
    """The identity's entry for test-time orientations: none for 1, so older indexes stay comparable."""
    if orientations not in ORIENTATIONS:
        raise ValueError(f"test-time orientations must be one of {ORIENTATIONS}, got {orientations}")
    return {} if orientations == 1 else {"orientations": orientations}


def with_orientations(model: LoadedModel, orientations: int) -> LoadedModel:
    """``model`` embedding each image averaged over ``orientations`` (1 or 8), its identity to match."""
    identity = {k: v for k, v in model.identity.items() if k != "orientations"}
    identity |= _orientations(orientations)
    return dataclasses.replace(model, identity=identity, orientations=orientations)


def load_trained(
    checkpoint_dir: str | Path, config: ml_collections.ConfigDict, step: int | None = None
) -> LoadedModel:
    """The DSNN or Siamese model of ``config`` with variables from ``checkpoint_dir`` (default: its
    best checkpoint, else its latest), whatever devices saved them."""
    variables, step = restore_variables(checkpoint_dir, step)
    return _trained(config, variables, step)


def load_workdir(workdir: str | Path, step: int | None = None) -> LoadedModel:
    """The model of a training run: ``<workdir>/config.json`` and ``<workdir>/checkpoints``."""
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise FileNotFoundError(f"{workdir}: no such run directory")
    return load_trained(
        run_folder.checkpoints_dir(workdir), load_config(run_folder.config_path(workdir)), step
    )


def load_exported(model_dir: str | Path) -> LoadedModel:
    """The model of a directory written by :func:`rockir_jax.training.checkpoint.export_model`."""
    variables, config, manifest = read_model_dir(model_dir)
    return _trained(config, variables, manifest["step"])


def load_vanilla(
    backbone: str = "resnet34",
    image_size: int = 224,
    pretrained: str | Path | None = None,
    seed: int = 0,
) -> LoadedModel:
    """The vanilla baseline: pooled, normalised features of a ported ImageNet backbone
    (:func:`rockir_jax.models.resnet_params.load_variables`), or of a randomly initialised one without
    ``pretrained``."""
    module = build_model("vanilla", backbone)
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    if pretrained:
        pretrained = Path(pretrained).absolute()
        # Every variable comes from the weights: only the shapes of an initialisation are needed.
        shapes = jax.eval_shape(module.init, jax.random.key(seed), images)
        variables = resnet_params.with_pretrained_backbones(
            shapes, resnet_params.load_variables(pretrained), source=str(pretrained)
        )
    else:
        variables = jax.tree.map(np.asarray, jax.jit(module.init)(jax.random.key(seed), images))
    identity = {
        "model": "vanilla",
        "backbone": backbone,
        "image_size": image_size,
        "pretrained": str(pretrained) if pretrained else None,
        "seed": None if pretrained else seed,
    }
    return LoadedModel(module, variables, image_size, identity)


def load_model(
    workdir: str | Path | None = None,
    *,
    model_dir: str | Path | None = None,
    checkpoint: str | Path | None = None,
    config: str | Path | ml_collections.ConfigDict | None = None,
    step: int | None = None,
    vanilla: str | None = None,
    pretrained: str | Path | None = None,
    image_size: int = 224,
    seed: int = 0,
    orientations: int | None = None,
) -> LoadedModel:
    """The model to embed with, from exactly one source.

    - ``workdir``: a training run (``config.json`` + ``checkpoints/``);
    - ``model_dir``: an exported model (:func:`rockir_jax.training.checkpoint.export_model`);
    - ``checkpoint`` with ``config``: a checkpoints directory and its config (a ``configs/*.py`` file,
      a run's ``config.json``, or a ConfigDict);
    - ``vanilla``: the untrained baseline of that backbone (e.g. ``"resnet34"``), with ported ImageNet
      weights from ``pretrained`` (else random, from ``seed``) at ``image_size``.

    ``step`` picks a checkpoint of a run (default: the best, else the latest). ``orientations`` (1 or
    8) overrides how many orientations of each image are averaged: by default a trained model's
    config's ``test_time_orientations`` (1 for runs saved before the option), 1 for vanilla.
    """
    if orientations is not None:
        _orientations(orientations)  # refused before any loading
    model = _load_model(workdir, model_dir, checkpoint, config, step, vanilla, pretrained, image_size, seed)
    return model if orientations is None else with_orientations(model, orientations)


def _load_model(workdir, model_dir, checkpoint, config, step, vanilla, pretrained, image_size, seed):
    chosen = [workdir is not None, model_dir is not None, checkpoint is not None, vanilla is not None]
    if sum(chosen) != 1:
        raise ValueError(
            "choose exactly one model: a run's workdir, an exported model directory, a checkpoint with "
            "its config, or vanilla"
        )
    if model_dir is not None:
        if step is not None:
            raise ValueError(f"{model_dir} is an exported model of one step: export another step instead")
        return load_exported(model_dir)
    if workdir is not None:
        return load_workdir(workdir, step)
    if checkpoint is not None:
        if config is None:
            raise ValueError("a checkpoint needs its config (the run's config.json or its configs/*.py)")
        if not isinstance(config, ml_collections.ConfigDict):
            config = load_config(config)
        return load_trained(checkpoint, config, step)
    return load_vanilla(vanilla, image_size, pretrained, seed)
