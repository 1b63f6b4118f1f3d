"""PyTorch state dicts → Flax variables, driven by mapping tables.

Understands torchvision's ``resnet18``/``resnet34`` names and the original RockIR backbone files (an
``nn.Sequential`` inside DDP, renamed by :data:`SEQUENTIAL_TO_TORCHVISION`). Every conversion is strict:
missing, unexpected and mis-shaped keys are all reported in one error. Nothing here needs torch except
:func:`load_torch_state_dict`. The key namings: docs/internals.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from rockir_jax import sharding
from rockir_jax.models.resnet import resnet

CONV2D = (2, 3, 1, 0)  # OIHW → HWIO
LINEAR = (1, 0)  # (out, in) → (in, out)

# (torch key pattern, flax path template, transpose); templates use the pattern's groups.
_BN = [
    (r"weight", "params/{p}/scale", None),
    (r"bias", "params/{p}/bias", None),
    (r"running_mean", "batch_stats/{p}/mean", None),
    (r"running_var", "batch_stats/{p}/var", None),
]


def _resnet_table() -> list[tuple[str, str, tuple[int, ...] | None]]:
    table: list[tuple[str, str, tuple[int, ...] | None]] = [
        (r"conv1\.weight", "params/conv1/kernel", CONV2D),
        (r"fc\.weight", "params/fc/kernel", LINEAR),
        (r"fc\.bias", "params/fc/bias", None),
        (r"layer(\d)\.(\d+)\.conv(\d)\.weight", "params/layer{0}_{1}/conv{2}/kernel", CONV2D),
        (
            r"layer(\d)\.(\d+)\.downsample\.0\.weight",
            "params/layer{0}_{1}/downsample_conv/kernel",
            CONV2D,
        ),
    ]
    for suffix, target, transpose in _BN:
        table += [
            (rf"bn1\.{suffix}", target.format(p="bn1"), transpose),
            (
                rf"layer(\d)\.(\d+)\.bn(\d)\.{suffix}",
                target.format(p="layer{0}_{1}/bn{2}"),
                transpose,
            ),
            (
                rf"layer(\d)\.(\d+)\.downsample\.1\.{suffix}",
                target.format(p="layer{0}_{1}/downsample_bn"),
                transpose,
            ),
        ]
    return table


RESNET_TABLE = _resnet_table()

SEQUENTIAL_TO_TORCHVISION: list[tuple[str, Callable[[re.Match], str]]] = [
    (r"0\.(.*)", lambda m: f"conv1.{m[1]}"),
    (r"1\.(.*)", lambda m: f"bn1.{m[1]}"),
    (r"([4-7])\.(.*)", lambda m: f"layer{int(m[1]) - 3}.{m[2]}"),
]

# Bookkeeping tensors with no Flax counterpart.
IGNORED_KEYS = re.compile(r".*num_batches_tracked$")


class PortingError(ValueError):
    """A state dict does not fit the target architecture; the message lists every mismatch."""


def load_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a ``torch.save``-d state dict as float32 numpy arrays, stripping DDP's ``module.`` prefix.

    Needs torch (``pip install rockir_jax[torch]``). Files saved on a GPU load on a CPU-only machine.
    """
    try:
        import torch
    except ImportError as err:
        raise ImportError("reading .pth/.pt files needs torch: pip install 'rockir_jax[torch]'") from err
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such state-dict file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise PortingError(f"{path}: not a readable torch state dict ({err})") from err
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise PortingError(f"{path}: expected a state dict (mapping of tensors), got {type(state).__name__}")
    return {
        key.removeprefix("module."): value.detach().cpu().numpy()
        for key, value in state.items()
        if hasattr(value, "detach")
    }


def _is_sequential_naming(state_dict: Mapping[str, Any]) -> bool:
    return "conv1.weight" not in state_dict and "0.weight" in state_dict


def to_torchvision_naming(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames the original RockIR's ``nn.Sequential`` backbone keys to torchvision's; others pass."""
    if not _is_sequential_naming(state_dict):
        return dict(state_dict)
    renamed = {}
    for key, value in state_dict.items():
        for pattern, rename in SEQUENTIAL_TO_TORCHVISION:
            match = re.fullmatch(pattern, key)
            if match:
                key = rename(match)
                break
        renamed[key] = value
    return renamed


def convert(
    state_dict: Mapping[str, np.ndarray],
    table: list[tuple[str, str, tuple[int, ...] | None]],
    expected: Mapping[str, Any],
    source: str = "state dict",
) -> dict[str, Any]:
    """Maps ``state_dict`` through ``table`` onto the flat ``expected`` shapes (``"params/a/b"`` keys).

    Returns nested Flax variables. Raises :class:`PortingError` listing every unmapped, unexpected,
    missing and mis-shaped key at once.
    """
    flat: dict[str, np.ndarray] = {}
    problems: list[str] = []
    for key, value in state_dict.items():
        if IGNORED_KEYS.fullmatch(key):
            continue
        for pattern, template, rule_transpose in table:
            match = re.fullmatch(pattern, key)
            if match:
                target, transpose = template.format(*match.groups()), rule_transpose
                break
        else:
            problems.append(f"unexpected key {key!r} (no mapping rule)")
            continue
        if target not in expected:
            problems.append(f"unexpected key {key!r} (→ {target}, not in the target architecture)")
            continue
        array = np.asarray(value, dtype=np.float32)
        if transpose is not None:
            array = array.transpose(transpose)
        if array.shape != tuple(expected[target].shape):
            problems.append(
                f"shape mismatch for {key!r} → {target}: source {array.shape} (after transpose), "
                f"target {tuple(expected[target].shape)}"
            )
            continue
        flat[target] = array
    problems += [f"missing key for {target}" for target in expected if target not in flat]
    if problems:
        raise PortingError(
            f"{source} does not match the target architecture ({len(problems)} problems):\n  "
            + "\n  ".join(problems)
        )
    return traverse_util.unflatten_dict(flat, sep="/")


def expected_resnet_shapes(arch: str, num_classes: int | None) -> dict[str, Any]:
    """Flat ``{"params/conv1/kernel": ShapeDtypeStruct, ...}`` of a ResNet, computed without FLOPs."""
    model = resnet(arch, num_classes=num_classes)()
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), np.float32)
    output = "logits" if num_classes else "pooled"
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False, output=output), x)
    return traverse_util.flatten_dict(shapes, sep="/")


def torchvision_to_flax(state_dict: Mapping[str, np.ndarray], arch: str = "resnet18") -> dict[str, Any]:
    """Converts a torchvision (or original RockIR backbone) ResNet state dict to Flax variables.

    The classifier is ported when the state dict has ``fc.*`` (its class count is read from it); the
    RockIR backbone files have none and give a backbone-only ``{"params", "batch_stats"}``.
    """
    state_dict = to_torchvision_naming(state_dict)
    num_classes = state_dict["fc.weight"].shape[0] if "fc.weight" in state_dict else None
    expected = expected_resnet_shapes(arch, num_classes)
    return convert(state_dict, RESNET_TABLE, expected, source=f"state dict for {arch}")


def save_variables(variables: Mapping[str, Any], directory: str | Path) -> Path:
    """Writes Flax variables as an orbax checkpoint directory (overwriting), returns its path."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory, dict(variables), force=True)
    return directory


def load_variables(directory: str | Path) -> dict[str, Any]:
    """Reads Flax variables written by :func:`save_variables` (e.g. a ported ImageNet backbone) as host
    numpy arrays, whatever devices wrote them."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such checkpoint directory")
    with ocp.PyTreeCheckpointer() as checkpointer:
        saved = checkpointer.metadata(directory).item_metadata.tree
        args = ocp.args.PyTreeRestore(item=saved, restore_args=sharding.host_restore_args(saved))
        return checkpointer.restore(directory, args=args)


def _linear_rules(*modules: str) -> list[tuple[str, str, tuple[int, ...] | None]]:
    """Rules for the original's ``nn.Sequential(nn.Linear, activation)`` layers named ``<m>.0``."""
    rules: list[tuple[str, str, tuple[int, ...] | None]] = []
    for module in modules:
        rules += [
            (rf"{module}\.0\.weight", f"params/{module}/kernel", LINEAR),
            (rf"{module}\.0\.bias", f"params/{module}/bias", None),
        ]
    return rules


HEAD_TABLE = _linear_rules("fc_out", "fc_out_image", "fc_out_rock", "fc_fusion", "fc_fusion2", "fc_fusion3")
REGRESSION_TABLE = _linear_rules("fc", "out_por", "out_perm")


def _expected_shapes(module, *inputs) -> dict[str, Any]:
    shapes = jax.eval_shape(lambda *x: module.init(jax.random.key(0), *x), *inputs)
    return traverse_util.flatten_dict(shapes, sep="/")


def import_rockir_heads(siam_pt: str | Path, reg_pt: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(head_variables, regression_variables)`` from the original's ``siam_epoch-N.pt`` and
    ``reg_epoch-N.pt``, for :class:`~rockir_jax.models.GatedSiameseHead` and
    :class:`~rockir_jax.models.RegressionHead`."""
    from rockir_jax.models.heads import GatedSiameseHead, RegressionHead

    feature_map = jax.ShapeDtypeStruct((1, 1, 1, 512), np.float32)
    head = convert(
        load_torch_state_dict(siam_pt),
        HEAD_TABLE,
        _expected_shapes(GatedSiameseHead(), *[feature_map] * 4),
        source=str(siam_pt),
    )
    regression = convert(
        load_torch_state_dict(reg_pt),
        REGRESSION_TABLE,
        _expected_shapes(RegressionHead(), feature_map),
        source=str(reg_pt),
    )
    return head, regression


def import_rockir_checkpoint(
    image_pt: str | Path,
    rock_pt: str | Path,
    siam_pt: str | Path,
    reg_pt: str | Path,
    arch: str = "resnet18",
) -> dict[str, Any]:
    """Full :class:`~rockir_jax.models.DSNN` variables from the original's four checkpoint files."""
    image = torchvision_to_flax(load_torch_state_dict(image_pt), arch)
    rock = torchvision_to_flax(load_torch_state_dict(rock_pt), arch)
    head, regression = import_rockir_heads(siam_pt, reg_pt)
    return {
        "params": {
            "image_backbone": image["params"],
            "rock_backbone": rock["params"],
            "head": head["params"],
            "regression": regression["params"],
        },
        "batch_stats": {
            "image_backbone": image["batch_stats"],
            "rock_backbone": rock["batch_stats"],
        },
    }


def with_pretrained_backbones(
    variables: Mapping[str, Any], backbone_variables: Mapping[str, Any], source: str = "pretrained"
) -> dict[str, Any]:
    """Copies ported ResNet variables (classifier dropped) into every ``*_backbone`` of a network.

    Shapes must match exactly; every mismatch is reported in one :class:`PortingError`.
    """
    backbone = {
        "params": {k: v for k, v in backbone_variables["params"].items() if k != "fc"},
        "batch_stats": backbone_variables["batch_stats"],
    }
    merged = {collection: dict(tree) for collection, tree in variables.items()}
    problems = []
    for name in [k for k in variables["params"] if k.endswith("_backbone")]:
        for collection in ("params", "batch_stats"):
            expected = traverse_util.flatten_dict(variables[collection][name], sep="/")
            given = traverse_util.flatten_dict(backbone[collection], sep="/")
            problems += [f"{collection}/{name}/{k}: missing" for k in expected if k not in given]
            problems += [f"{collection}/{name}/{k}: unexpected" for k in given if k not in expected]
            problems += [
                f"{collection}/{name}/{k}: shape {np.shape(given[k])} != {tuple(expected[k].shape)}"
                for k in expected
                if k in given and np.shape(given[k]) != tuple(expected[k].shape)
            ]
            merged[collection][name] = jax.tree.map(np.asarray, backbone[collection])
    if problems:
        raise PortingError(
            f"{source} does not fit the model's backbones ({len(problems)} problems):\n  "
            + "\n  ".join(problems)
        )
    return merged
