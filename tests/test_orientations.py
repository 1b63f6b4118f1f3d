"""Test-time orientations: embeddings and predictions averaged over an image's 8 orientations.

References: numpy's own rotations and reflections (np.rot90, np.fliplr), and the one-orientation embed
step applied to each of them.
"""

import json

import jax
import numpy as np
import pytest
from test_evaluate import evaluate_cli, exits_with_error, shared_run

from rockir_jax import sharding
from rockir_jax.models import build_model
from rockir_jax.retrieval.embed import dihedral_views, make_embed_step
from rockir_jax.retrieval.loading import load_model
from rockir_jax.retrieval.search import check_comparable


def numpy_orientations(images: np.ndarray) -> list[np.ndarray]:
    """The 8 rotations and reflections of (N, H, W, C) images, from numpy's rot90 and fliplr."""
    turns = [np.rot90(images, k, axes=(1, 2)) for k in range(4)]
    return turns + [np.flip(turn, axis=2) for turn in turns]


def as_set(views) -> set[bytes]:
    return {np.ascontiguousarray(view).tobytes() for view in views}


def test_the_views_are_the_eight_orientations_of_the_square():
    images = np.random.default_rng(0).integers(0, 255, (2, 5, 5, 3)).astype(np.float32)
    views = np.asarray(dihedral_views(images))
    assert views.shape == (8, 2, 5, 5, 3)
    np.testing.assert_array_equal(views[0], images)
    assert as_set(views) == as_set(numpy_orientations(images))
    assert len(as_set(views)) == 8


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return shared_run(tmp_path_factory)[2]


@pytest.fixture(scope="module")
def dsnn():
    module = build_model("dsnn", "resnet18", conv_algorithm="direct")
    images = np.zeros((1, 32, 32, 3), np.float32)
    variables = jax.jit(module.init)(jax.random.key(0), images, images)
    return module, variables


def test_eight_orientations_average_the_one_orientation_outputs(dsnn):
    module, variables = dsnn
    mesh = sharding.make_mesh(jax.devices()[:1])
    images = np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype(np.float32)
    averaged = make_embed_step(mesh, module, orientations=8)(variables, images)
    single = make_embed_step(mesh, module)
    outputs = [single(variables, np.ascontiguousarray(view)) for view in numpy_orientations(images)]
    for key in ("embedding", "reg"):
        reference = np.mean([np.asarray(out[key], np.float64) for out in outputs], axis=0)
        np.testing.assert_allclose(averaged[key], reference, rtol=1e-4, atol=1e-5)
    # One orientation is not invariant; the average is: a rotated slice gives the same answer.
    rotated = np.ascontiguousarray(np.rot90(images, 1, axes=(1, 2)))
    turned = make_embed_step(mesh, module, orientations=8)(variables, rotated)
    np.testing.assert_allclose(turned["embedding"], averaged["embedding"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(turned["reg"], averaged["reg"], rtol=1e-4, atol=1e-5)
    assert not np.allclose(single(variables, rotated)["embedding"], outputs[0]["embedding"], atol=1e-5)


def test_other_orientation_counts_are_refused(dsnn):
    mesh = sharding.make_mesh(jax.devices()[:1])
    with pytest.raises(ValueError, match="orientations must be one of"):
        make_embed_step(mesh, dsnn[0], orientations=4)


def test_a_run_takes_its_configs_orientations_and_names_them(run, tmp_path):
    eight = load_model(run)
    assert eight.orientations == 8 and eight.identity["orientations"] == 8
    config = json.loads((run / "config.json").read_text())
    config["test_time_orientations"] = 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    one = load_model(checkpoint=run / "checkpoints", config=tmp_path / "config.json")
    assert one.orientations == 1 and "orientations" not in one.identity
    # An index of one is not searched with queries of the other.
    assert {k: v for k, v in eight.identity.items() if k != "orientations"} == one.identity

    class Index:
        model = eight.identity

    with pytest.raises(ValueError, match="not comparable"):
        check_comparable(Index(), one, "the index")
    config["test_time_orientations"] = 4
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="test-time orientations must be one of"):
        load_model(checkpoint=run / "checkpoints", config=tmp_path / "config.json")


def test_the_commands_take_orientations(tmp_path_factory, tmp_path, capsys):
    root, _, run = shared_run(tmp_path_factory)
    where = ("--workdir", run, "--db", root, "--split", "db_test", "--metadata", root / "metadata.csv")
    evaluate_cli(*where, "--out", tmp_path / "eight", "--figures", "0")
    evaluate_cli(*where, "--out", tmp_path / "one", "--figures", "0", "--orientations", "1")
    eight, one = (json.loads((tmp_path / n / "metrics.json").read_text())["model"] for n in ("eight", "one"))
    assert eight["orientations"] == 8 and "orientations" not in one
    exits_with_error(capsys, "orientations must be one of", evaluate_cli, *where, "--out", tmp_path / "x",
                     "--orientations", "3")  # fmt: skip
