"""Tests for rockir_jax.data.pipeline: pair sampling, augmentation, determinism, resume, eval."""

import json

import benchmark_lib
import grain
import numpy as np
import orbax.checkpoint as ocp
import pandas as pd
import pytest
from PIL import Image

from rockir_jax.data import pipeline
from rockir_jax.data.metadata import index_dataset, same_metadata
from rockir_jax.data.sources import from_index
from rockir_jax.data.tfds_builder import build_image_cache, load_split

SIZE = 32
# Uneven sample sizes so that P(a uniform second image shares image 0's sample) is not trivial.
SAMPLES = {"AAA001": 2, "AAA002": 3, "BBB001": 5}
# AAA001 and AAA002 differ by under 10 % in total: different samples, same metadata.
METADATA = {"AAA001": (0.20, 400.0), "AAA002": (0.205, 410.0), "BBB001": (0.30, 50.0)}


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(2)
    for sample, n in SAMPLES.items():
        (root / "train" / sample).mkdir(parents=True)
        for k in range(n):
            pixels = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
            Image.fromarray(pixels, "L").save(root / "train" / sample / f"{sample}_slice{k}.png")
    rows = [
        {"Created_label": s, "Porosity": p, "Permeability": k, "Pixelsize": 1.0}
        for s, (p, k) in METADATA.items()
    ]
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return index_dataset(root, root / "metadata.csv")


@pytest.fixture(scope="module")
def source(index, tmp_path_factory):
    return load_split(build_image_cache(index, SIZE, tmp_path_factory.mktemp("cache")), "train")


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert sorted(x) == sorted(y)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def train(source, seed=0, batch=8, **kwargs):
    kwargs.setdefault("process_index", 0)
    kwargs.setdefault("process_count", 1)
    return pipeline.train_iterator(source, global_batch_size=batch, seed=seed, **kwargs)


def identify(images, source, transposes=(0,)):
    """(image index, flip h + 2v + 4·transpose) of each normalised image, by exact match with the
    records' orientations (only the untransposed ones by default)."""
    variants = {}
    for i in range(len(source)):
        raw = np.asarray(source.records[i]["image"])
        for h in (0, 1):
            for v in (0, 1):
                for t in transposes:
                    oriented = raw[:, ::-1] if h else raw
                    oriented = oriented[::-1] if v else oriented
                    oriented = np.transpose(oriented, (1, 0, 2)) if t else oriented
                    variants[pipeline.normalize(oriented).tobytes()] = (i, h + 2 * v + 4 * t)
    return [variants[im.tobytes()] for im in images]


def test_batch_layout(source):
    batch = next(train(source, batch=6))
    expected = {
        "image0": ((6, SIZE, SIZE, 3), np.float32),
        "image1": ((6, SIZE, SIZE, 3), np.float32),
        "targets0": ((6, 2), np.float32),
        "targets1": ((6, 2), np.float32),
        "same_sample": ((6,), np.float32),
        "same_meta": ((6,), np.float32),
        "reservoir0": ((6,), np.int32),
        "reservoir1": ((6,), np.int32),
    }
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected
    assert batch["image0"].min() >= -1.0 and batch["image0"].max() <= 1.0
    # Greyscale: the three channels are equal.
    np.testing.assert_array_equal(batch["image1"][..., 0], batch["image1"][..., 2])


def test_normalize_matches_original_formula():
    x = np.array([0, 51, 127, 128, 255], np.uint8)
    np.testing.assert_allclose(pipeline.normalize(x), (x / 255.0 - 0.5) / 0.5, atol=1e-6)
    assert pipeline.normalize(x).dtype == np.float32


def test_pairs_labels_targets_and_flips(source, index):
    batches = take(train(source, seed=3, batch=50), 8)  # 400 pairs
    sample_ids = index.splits["train"].sample_ids
    targets = index.splits["train"].targets
    flips = []
    equal_flips = 0
    for b in batches:
        first = identify(b["image0"], source)
        second = identify(b["image1"], source)
        i0 = np.array([i for i, _ in first])
        i1 = np.array([i for i, _ in second])
        flips += [f for _, f in first + second]
        equal_flips += sum(a == b for (_, a), (_, b) in zip(first, second, strict=True))
        # Each image's labels and targets are its own (the original used image 0's for both).
        np.testing.assert_array_equal(b["targets0"], targets[i0])
        np.testing.assert_array_equal(b["targets1"], targets[i1])
        np.testing.assert_array_equal(b["same_sample"], sample_ids[i0] == sample_ids[i1])
        np.testing.assert_array_equal(b["same_meta"], same_metadata(targets[i0], targets[i1]))
    # All four flip combinations, about equally often (800 images; 4-sigma band around 200).
    counts = np.bincount(flips, minlength=4)
    assert np.all(np.abs(counts - 200) < 4 * np.sqrt(800 * 0.25 * 0.75)), counts
    # The two images of a pair are flipped independently: equal flips in about 1/4 of the pairs.
    assert abs(equal_flips - 100) < 4 * np.sqrt(400 * 0.25 * 0.75), equal_flips
    # Different samples with the same metadata do occur, so same_meta is not same_sample.
    assert any(((b["same_meta"] == 1) & (b["same_sample"] == 0)).any() for b in batches)
    assert any(((b["same_meta"] == 0) & (b["same_sample"] == 0)).any() for b in batches)


def test_flips_follow_the_original_draws(source):
    """Pair g draws i0, the coin, (i1), then the flips h0 v0 h1 v1 from default_rng([seed, g])."""
    seed, batch_size = 21, 12
    batch = next(train(source, seed=seed, batch=batch_size))
    groups = {}
    for i, sample in enumerate(np.asarray(source.sample_ids)):
        groups.setdefault(sample, []).append(i)
    expected0, expected1 = [], []
    for g in range(batch_size):
        rng = np.random.default_rng([seed, g])
        i0 = int(rng.integers(len(source)))
        if rng.random() < 0.5:
            members = sorted(groups[source.sample_ids[i0]])
            i1 = members[int(rng.integers(len(members)))]
        else:
            i1 = int(rng.integers(len(source)))
        h0, v0, h1, v1 = rng.random(4) < 0.5
        expected0.append((i0, h0 + 2 * v0))
        expected1.append((i1, h1 + 2 * v1))
    assert identify(batch["image0"], source) == expected0
    assert identify(batch["image1"], source) == expected1


def test_dihedral_gives_all_eight_orientations_alike(source):
    batches = take(train(source, seed=3, batch=50, augment="dihedral"), 8)
    found = [identify(b[k], source, transposes=(0, 1)) for b in batches for k in ("image0", "image1")]
    counts = np.bincount([f for image in found for _, f in image], minlength=8)
    # 800 images; 4-sigma band around 100 each.
    assert np.all(np.abs(counts - 100) < 4 * np.sqrt(800 / 8 * 7 / 8)), counts
    # Same pairs and flips as "flips": the transpose is drawn after them.
    plain = take(train(source, seed=3, batch=50), 8)
    for b, p in zip(batches, plain, strict=True):
        for key in ("image0", "image1"):
            with_t = [(i, f % 4) for i, f in identify(b[key], source, transposes=(0, 1))]
            assert with_t == identify(p[key], source)


def test_grey_jitter_is_a_bounded_affine_map_per_image(source):
    jitter = 0.1
    plain = next(train(source, seed=4, batch=40, augment="dihedral"))
    jittered = next(train(source, seed=4, batch=40, augment="dihedral", grey_jitter=jitter))
    scales, shifts = [], []
    for key in ("image0", "image1"):
        for x, y in zip(plain[key], jittered[key], strict=True):
            design = np.stack([x.ravel(), np.ones(x.size)], axis=1).astype(np.float64)
            (a, b), *_ = np.linalg.lstsq(design, y.ravel().astype(np.float64), rcond=None)
            np.testing.assert_allclose(a * x + b, y, atol=1e-5)
            scales.append(a)
            shifts.append(b)
    assert np.all(np.abs(np.array(scales) - 1) <= jitter + 1e-6)
    assert np.all(np.abs(shifts) <= jitter + 1e-6)
    # Drawn per image: spread over most of the interval.
    assert np.ptp(scales) > jitter and np.ptp(shifts) > jitter


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(augment="rotate"), "unknown augmentation 'rotate'"),
        (dict(grey_jitter=1.5), "grey_jitter"),
        (dict(same_reservoir_probability=0.6), "add up to at most 1, got 0.5 and 0.6"),
        (dict(same_reservoir_probability=-0.1), "must be ≥ 0"),
        (dict(metadata_label="rock"), "unknown metadata label 'rock'; choose one of measurements, reservoir"),
    ],
)
def test_bad_sampling_settings_are_refused(source, kwargs, message):
    with pytest.raises(ValueError, match=message):
        train(source, **kwargs)


def test_same_sample_rate(source):
    # P(same) = 1/2 + 1/2 * sum_s (n_s / N)^2 = 1/2 + 1/2 * (4 + 9 + 25) / 100 = 0.69
    n = 4000
    same = np.concatenate([b["same_sample"] for b in take(train(source, seed=5, batch=500), 8)])
    expected = 0.5 + 0.5 * sum((k / 10) ** 2 for k in SAMPLES.values())
    assert abs(same.mean() - expected) < 4 * np.sqrt(expected * (1 - expected) / n)
    # With the probability at 0, only chance coincidences remain.
    chance = np.concatenate(
        [b["same_sample"] for b in take(train(source, 5, 500, same_sample_probability=0.0), 8)]
    )
    assert abs(chance.mean() - 0.38) < 4 * np.sqrt(0.38 * 0.62 / n)


def test_deterministic_from_seed(source):
    assert_same_batches(take(train(source, seed=7), 3), take(train(source, seed=7), 3))
    other = take(train(source, seed=8), 3)
    assert not np.array_equal(take(train(source, seed=7), 3)[0]["image0"], other[0]["image0"])


def test_file_source_gives_the_same_stream(source, index):
    files = from_index(index, "train", SIZE)
    assert_same_batches(take(train(files, seed=4), 2), take(train(source, seed=4), 2))


def test_processes_split_the_global_batch(source):
    whole = take(train(source, seed=9, batch=8), 3)
    parts = [take(train(source, 9, 8, process_index=p, process_count=2), 3) for p in (0, 1)]
    for step in range(3):
        assert parts[0][step]["image0"].shape[0] == 4
        joined = {k: np.concatenate([parts[0][step][k], parts[1][step][k]]) for k in whole[step]}
        assert_same_batches([joined], [whole[step]])
    with pytest.raises(ValueError, match="not divisible"):
        train(source, batch=7, process_index=0, process_count=2)


def test_resume_from_saved_state(source):
    iterator = train(source, seed=11)
    take(iterator, 2)
    state = json.loads(json.dumps(iterator.get_state()))  # must survive a JSON round trip
    expected = take(iterator, 3)
    restored = train(source, seed=11)
    restored.set_state(state)
    assert_same_batches(take(restored, 3), expected)


def test_resume_through_orbax(source, tmp_path):
    iterator = train(source, seed=12)
    take(iterator, 2)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
        expected = take(iterator, 2)
        restored = train(source, seed=12)
        manager.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
    assert_same_batches(take(restored, 2), expected)


def test_two_workers_same_stream_and_resume(source):
    reference = take(train(source, seed=13), 5)
    iterator = train(source, seed=13, num_workers=2)
    try:
        assert_same_batches(take(iterator, 2), reference[:2])
        state = iterator.get_state()
        assert_same_batches(take(iterator, 3), reference[2:])
    finally:
        iterator.close()
    restored = train(source, seed=13, num_workers=2)
    try:
        restored.set_state(state)
        assert_same_batches(take(restored, 3), reference[2:])
    finally:
        restored.close()


@pytest.mark.parametrize(("batch", "processes"), [(4, 1), (10, 1), (3, 1), (4, 2)])
def test_eval_covers_every_image_once(source, index, batch, processes):
    table = index.splits["train"]
    seen = []
    for p in range(processes):
        batches = list(
            pipeline.eval_iterator(source, global_batch_size=batch, process_index=p, process_count=processes)
        )
        assert len(batches) == -(-len(table) // batch)
        for b in batches:
            assert b["image"].shape == (batch // processes, SIZE, SIZE, 3)
            assert b["mask"].dtype == bool
            real = b["index"][b["mask"]]
            seen += real.tolist()
            np.testing.assert_array_equal(b["sample_id"][b["mask"]], table.sample_ids[real])
            np.testing.assert_array_equal(b["reservoir_id"][b["mask"]], table.reservoir_ids[real])
            np.testing.assert_array_equal(b["targets"][b["mask"]], table.targets[real])
            for row, i in zip(b["image"][b["mask"]], real, strict=True):
                np.testing.assert_array_equal(row, pipeline.normalize(np.asarray(source.records[i]["image"])))
            assert (b["index"][~b["mask"]] == -1).all() and (b["image"][~b["mask"]] == 0).all()
    assert sorted(seen) == list(range(len(table)))


def test_steps_per_epoch_and_throughput(source):
    assert pipeline.steps_per_epoch(10, 4) == 3
    assert pipeline.steps_per_epoch(8, 4) == 2
    assert benchmark_lib.measure_pairs_per_second(source, 8, num_workers=0, num_batches=2) > 0


def test_same_reservoir_rate(source):
    # Reservoirs by file prefix: AAA (AAA001 with 2 images, AAA002 with 3) and BBB (BBB001 with 5),
    # told apart here by porosity (AAA's 0.20 and 0.205, BBB's 0.30).
    def shares(**kwargs):
        batches = take(train(source, seed=9, batch=500, **kwargs), 8)
        porosity = [np.concatenate([b[key][:, 0] for b in batches]) for key in ("targets0", "targets1")]
        reservoir = [p > 0.25 for p in porosity]
        same_sample = np.concatenate([b["same_sample"] for b in batches])
        return (reservoir[0] == reservoir[1]).mean(), same_sample.mean()

    n = 4000
    # Half the pairs within the sample, the other half within the reservoir: always the same reservoir.
    assert shares(same_reservoir_probability=0.5)[0] == 1.0
    # Half within the reservoir, half uniform: same reservoir 1/2 + 1/2 * ((5/10)^2 + (5/10)^2) = 0.75;
    # same sample 1/2 * (2/10 * 2/5 + 3/10 * 3/5 + 5/10 * 5/5) + 1/2 * (4 + 9 + 25) / 100 = 0.57
    # (a draw within the sample instead would give 0.69).
    reservoir, sample = shares(same_sample_probability=0.0, same_reservoir_probability=0.5)
    assert abs(reservoir - 0.75) < 4 * np.sqrt(0.75 * 0.25 / n)
    assert abs(sample - 0.57) < 4 * np.sqrt(0.57 * 0.43 / n)


def test_metadata_label_by_measurements_or_by_reservoir(source):
    # Reservoirs AAA (porosity 0.20 and 0.205) and BBB (0.30), as in test_same_reservoir_rate.
    kwargs = dict(seed=3, batch=400, same_sample_probability=0.0, same_reservoir_probability=0.3)
    for label in ("measurements", "reservoir"):
        batch = take(train(source, metadata_label=label, **kwargs), 1)[0]
        t0, t1 = batch["targets0"].astype(np.float64), batch["targets1"].astype(np.float64)
        if label == "reservoir":
            expected = (t0[:, 0] > 0.25) == (t1[:, 0] > 0.25)
        else:
            expected = np.abs((t0 - t1) / t1).sum(axis=1) < 0.1
        np.testing.assert_array_equal(batch["same_meta"], expected.astype(np.float32))
        assert 0 < expected.mean() < 1
        if label == "reservoir":
            # Different samples of one reservoir: positives here, not by measurements.
            assert (expected & (batch["same_sample"] == 0) & (np.abs(t0[:, 0] - t1[:, 0]) > 0.004)).any()
