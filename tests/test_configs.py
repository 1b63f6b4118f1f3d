"""The config files (each loads; the paper's keep the original RockIR objective) and overrides."""

import importlib
import re
from pathlib import Path

import pytest

from configs import default
from rockir_jax.configuration import override
from rockir_jax.training.losses import DSNN_LOSS_WEIGHTS

PAPER = ("dsnn_resnet18", "siamese_resnet18", "siamese_resnet34")
ORIGINAL_OBJECTIVE = (*PAPER, "original_recipe")


@pytest.mark.parametrize("name", ("default", "quality", *ORIGINAL_OBJECTIVE))
def test_config_loads_with_every_part_named(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    assert config.model in ("dsnn", "siamese") and config.backbone in ("resnet18", "resnet34")
    assert config.data.augment in ("flips", "dihedral")
    assert config.learning_rate_decay in ("constant", "cosine")


@pytest.mark.parametrize("name", ORIGINAL_OBJECTIVE)
def test_configs_that_keep_the_original_objective(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    # The original: no schedule, h/v flips only, raw regression targets weighted 10.
    assert config.warmup_steps == 0 and config.learning_rate_decay == "constant"
    assert config.data.augment == "flips" and config.data.grey_jitter == 0.0
    assert config.data.same_reservoir_probability == 0.0 and config.data.metadata_label == "measurements"
    assert not config.standardize_targets and config.ema_decay == 0.0
    assert config.loss_weights.to_dict() == DSNN_LOSS_WEIGHTS | {"embedding": 0.0}


@pytest.mark.parametrize("name", PAPER)
def test_paper_configs_train_as_the_paper(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    # AdamW-amsgrad at 1e-5 per GPU, 224² ImageNet backbones, 1000 epochs.
    assert config.learning_rate == 1e-5 and config.scale_learning_rate_by_devices
    assert config.image_size == 224 and config.pretrained and config.num_epochs == 1000


def test_overrides_are_read_as_the_keys_types():
    config = override(
        default.get_config(),
        [
            "learning_rate=1e-3",
            "num_train_steps=300",
            "standardize_targets=true",
            "data.augment=dihedral",
            "data.extra_targets=('Depth',)",
            "data.cache_dir=~/rocks_cache",
        ],
    )
    assert config.learning_rate == 1e-3 and config.num_train_steps == 300
    assert config.standardize_targets is True and config.data.augment == "dihedral"
    assert config.data.extra_targets == ("Depth",)
    assert config.data.cache_dir == str(Path.home() / "rocks_cache")  # paths expanded as everywhere


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("learning_rate", "expected KEY=VALUE"),
        ("learnig_rate=1", "learnig_rate: no such config key"),
        ("data.augmnt=flips", "data.augmnt: no such config key"),
        ("num_train_steps=1.5", "num_train_steps=1.5: not an int"),
        ("standardize_targets=maybe", "not a bool"),
    ],
)
def test_bad_overrides_name_the_key(assignment, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        override(default.get_config(), [assignment])


def test_compare_command_refuses_a_bad_override(tmp_path, capsys):
    from rockir_jax.cli import compare

    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--out", str(tmp_path), "--set", "learnig_rate=1", "--models", "Vanilla-R34"])
    assert exit_info.value.code == 2
    assert "error: learnig_rate: no such config key" in capsys.readouterr().err
