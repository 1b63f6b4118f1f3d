"""The code of ``scripts/benchmark.py``: speed, measured side by side in one run.

Train step, k-NN search, input pipeline and embedding.

Every comparison runs in the same process run on the same machine, with repetitions interleaved
(ours, reference, ours, reference, ...) so that load from other processes hits both sides alike, and is
reported as medians and ratios:

1. **train**: DSNN pairs/s of the jitted sharded step on a fixed device-resident batch, branch parallel
   (what training uses on an even device count) and data parallel (:mod:`rockir_jax.training.device_layout`),
   against an eager PyTorch version of the original's step (two torchvision ResNet-18 trunks, gated and
   regression heads, BCE + smooth-L1 loss, ``AdamW(amsgrad=True)``), written here from the original's code.
2. **search**: queries/s of :class:`~rockir_jax.retrieval.KnnIndex` against ``faiss.IndexFlatL2`` at its
   best: BLAS threshold lowered, and its bundled OpenBLAS with and without ``OPENBLAS_CORETYPE=SkylakeX``.
   OpenBLAS reads that variable when it loads, so each FAISS setting lives in its own worker process
   (:func:`faiss_worker`) that the benchmark drives trial by trial over a pipe.
3. **pipeline**: grain training pairs/s (0 and N workers) against the train step's consumption.
4. **embed**: images/s of the sharded DSNN embedding step.
5. **cache build**: images/s of :func:`rockir_jax.data.build_image_cache` (decode, resize, write ArrayRecord)
   with 1, 2, … worker processes, against 1.
6. **serve** (``--serve``, on its own): p50 and p95 latency of ``POST /api/search`` through the search
   page's ASGI app, one query slice against an index of random embeddings, sequential and concurrent.

torch and faiss are optional: without them (or with ``torch=False`` / ``faiss=False``) the rows carry no
reference and say so.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from PIL import Image

from rockir_jax import data, runtime, sharding
from rockir_jax.models import build_model
from rockir_jax.retrieval import KnnIndex
from rockir_jax.retrieval.embed import make_embed_step
from rockir_jax.training import device_layout
from rockir_jax.training import step as step_lib
from rockir_jax.training.losses import dsnn_loss
from rockir_jax.training.optim import adamw_amsgrad

GFLOP_PER_PAIR_224 = 42.6
"""DSNN training FLOPs per pair at 224² (4 ResNet-18 passes, forward + backward)."""
FAISS_CORETYPES = ("default", "SkylakeX")
FAISS_BLAS_THRESHOLD = 20
SCRIPTS = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What to measure; :func:`quick_config` and :func:`full_config` are the two presets."""

    image_sizes: tuple[int, ...] = (128,)
    batch: int = 8
    dtype: str = "float32"
    conv_algorithms: tuple[str, ...] = ("auto",)
    """the DSNN's 3×3 convolution algorithms to measure, each in every layout (ResNet.conv_algorithm)."""
    repeats: int = 5
    queries: tuple[int, ...] = (1000, 100, 1)
    database: int = 100_000
    dim: int = 512
    k: int = 10
    search_repeats: int = 5
    embed_batch: int = 32
    pipeline_batches: int = 20
    pipeline_workers: tuple[int, ...] = (0, 2)
    cache_workers: tuple[int, ...] = ()
    """worker processes of the cache-build rows, the first their reference (default 1, 2, 4, … cores)."""
    cache_slices: int = 4096
    cache_slice_size: int = 256
    """the generated micro-CT slices of the cache-build rows: how many, and their side."""
    cache_repeats: int = 3
    data_root: str = str(SCRIPTS.parent / "datasets" / "synthetic_rocks")
    peak_tflops: float | None = None
    num_devices: int = 0
    """devices of the data-parallel mesh (and of the search's database shards); 0 = all."""
    torch: bool = True
    faiss: bool = True
    seed: int = 0
    serve_database: int = 10_000
    """rows of the search page's index (random embeddings)."""
    serve_requests: int = 40
    """timed requests per search page setting."""
    serve_clients: int = 4
    """concurrent clients of the second search page setting."""

    def mesh(self) -> Mesh:
        """The 1-D ``data`` mesh over the first :attr:`num_devices` devices."""
        return sharding.make_mesh(self.devices())

    def devices(self) -> list[jax.Device]:
        return jax.devices()[: self.num_devices or None]


def quick_config(**overrides: Any) -> BenchConfig:
    """CPU quick mode: 128² only, 5 repetitions (< 5 minutes on 2 cores)."""
    return dataclasses.replace(BenchConfig(), **overrides)


def full_config(**overrides: Any) -> BenchConfig:
    """Full mode: 128² and 224², more repetitions and pipeline batches."""
    base = BenchConfig(image_sizes=(128, 224), repeats=9, search_repeats=9, pipeline_batches=50)
    return dataclasses.replace(base, **overrides)


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the results table: ours against a reference, both medians in ``unit``."""

    benchmark: str
    setting: str
    ours: float
    unit: str
    reference: str = ""
    reference_value: float | None = None
    note: str = ""
    agreement: float | None = None
    """search only: the smallest fraction of queries whose top-k sets match the reference's."""

    @property
    def ratio(self) -> float | None:
        """ours / reference (higher is better for every unit with a reference)."""
        if self.reference_value is None or self.reference_value <= 0:
            return None
        return self.ours / self.reference_value


# ---------------------------------------------------------------------------------------------- timing


def interleaved_times(trials: Mapping[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds of ``repeats`` calls of each trial, alternating between trials every round.

    Each trial is called once beforehand (compilation, allocator and cache warm-up), untimed; the
    warm-ups run in parallel threads because XLA compiles mostly on one core and dominates short runs.
    """
    with concurrent.futures.ThreadPoolExecutor(len(trials)) as pool:
        list(pool.map(lambda trial: trial(), trials.values()))
    times: dict[str, list[float]] = {name: [] for name in trials}
    for _ in range(repeats):
        for name, trial in trials.items():
            start = time.perf_counter()
            trial()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    """Median of ``values``."""
    return float(statistics.median(values))


def round_ratio_quartiles(
    ours_seconds: Sequence[float], reference_seconds: Sequence[float]
) -> tuple[float, float]:
    """First and third quartiles of the speed ratio ours / reference within each interleaved round.

    A round's two timings ran back to back, so the ratios cancel the machine's slow drift in speed, and
    their spread shows whether a ratio of medians near 1 is a tie or a lead.
    """
    ratios = [reference / ours for ours, reference in zip(ours_seconds, reference_seconds, strict=True)]
    first, _, third = statistics.quantiles(ratios, n=4, method="inclusive")
    return first, third


# ------------------------------------------------------------------------------------------ train step


def measure_pairs_per_second(
    source: data.SplitSource, global_batch_size: int, num_workers: int, num_batches: int, seed: int = 0
) -> float:
    """Training pairs per second of this pipeline on one process, after a warm-up batch.

    The warm-up excludes worker start-up; the rate covers ``num_batches`` further batches.
    """
    iterator = data.train_iterator(
        source,
        global_batch_size=global_batch_size,
        seed=seed,
        num_workers=num_workers,
        process_index=0,
        process_count=1,
    )
    try:
        next(iterator)
        start = time.perf_counter()
        for _ in range(num_batches):
            next(iterator)
        elapsed = time.perf_counter() - start
    finally:
        iterator.close()
    return num_batches * global_batch_size / elapsed


def pair_batch(batch: int, image_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A fixed random batch of DSNN training pairs (NHWC images, labels, regression targets)."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (2, batch, image_size, image_size, 3)).astype(np.float32)
    return {
        "image0": images[0],
        "image1": images[1],
        "same_sample": rng.integers(0, 2, batch).astype(np.float32),
        "same_meta": rng.integers(0, 2, batch).astype(np.float32),
        "targets0": rng.uniform(0, 1, (batch, 2)).astype(np.float32),
        "targets1": rng.uniform(0, 1, (batch, 2)).astype(np.float32),
        "reservoir0": rng.integers(0, 3, batch).astype(np.int32),
        "reservoir1": rng.integers(0, 3, batch).astype(np.int32),
    }


def jax_dsnn(
    dtype: str, image_size: int, seed: int = 0, conv_algorithm: str = "auto"
) -> tuple[nn.Module, dict[str, Any]]:
    """The DSNN-ResNet-18 (computation in ``dtype``, float32 parameters) and its initial variables."""
    model = build_model(
        "dsnn",
        "resnet18",
        axis_name=sharding.DATA_AXIS,
        dtype=jnp.dtype(dtype),
        conv_algorithm=conv_algorithm,
    )
    return model, step_lib.init_variables(model, jax.random.key(seed), image_size)


def jax_train_trial(
    model: nn.Module,
    variables: Mapping[str, Any],
    batch: Mapping[str, np.ndarray],
    layout: device_layout.Layout,
) -> Callable[[], None]:
    """One call = one jitted sharded DSNN train step on a device-resident batch, waited for."""
    # The step donates its state: copy, so the caller's variables (shared with the embed trial) survive.
    own = jax.tree.map(jnp.copy, variables)
    state = step_lib.create_train_state(model, own, adamw_amsgrad(1e-5, weight_decay=1e-5))
    holder = {"state": layout.place(state)}
    device_batch = layout.shard_batch(batch)
    train_step = layout.train_step(model, dsnn_loss)

    def trial() -> None:
        # The state is donated: keep the new one for the next call.
        holder["state"], metrics = train_step(holder["state"], device_batch)
        jax.block_until_ready(metrics)

    return trial


def torch_dsnn() -> Any:
    """The original's DSNN in PyTorch: the model the reference step trains."""
    import torch
    import torchvision

    nn = torch.nn

    def trunk() -> nn.Module:
        # resnet18 without avgpool and fc: the 512 x h x w feature map.
        return nn.Sequential(*list(torchvision.models.resnet18(weights=None).children())[:-2])

    class DSNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.image, self.rock = trunk(), trunk()
            self.fc_out_image, self.fc_out_rock = nn.Linear(512, 1), nn.Linear(512, 1)
            self.fc_fusion, self.fc_fusion2, self.fc_fusion3 = (
                nn.Linear(1024, 32),
                nn.Linear(32, 16),
                nn.Linear(16, 2),
            )
            self.fc_out = nn.Linear(512, 1)
            self.reg_fc, self.reg_por, self.reg_perm = nn.Linear(512, 64), nn.Linear(64, 1), nn.Linear(64, 1)

        def regression(self, h):
            x = torch.relu(self.reg_fc(h.mean((2, 3))))
            return torch.cat([self.reg_por(x), self.reg_perm(x)], dim=1)

        def forward(self, x0, x1):
            h1, h2, h3, h4 = self.image(x0), self.image(x1), self.rock(x0), self.rock(x1)
            w1, w2 = (h1 - h2).abs().mean((2, 3)), (h3 - h4).abs().mean((2, 3))
            p_img, p_rock = torch.sigmoid(self.fc_out_image(w1)), torch.sigmoid(self.fc_out_rock(w2))
            g = torch.relu(self.fc_fusion(torch.cat([w1, w2], dim=1)))
            g = torch.relu(self.fc_fusion3(torch.relu(self.fc_fusion2(g))))
            s = torch.softmax(g, dim=1)
            w = (w1 * s[:, 0:1] + w2 * s[:, 1:2]) / 2
            return torch.sigmoid(self.fc_out(w)), p_img, p_rock, self.regression(h3), self.regression(h4)

    return DSNN()


def torch_device() -> str:
    """Where the PyTorch reference runs: on the GPU when JAX runs on one (and torch sees it), else the CPU."""
    import torch

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def torch_train_trial(
    batch: Mapping[str, np.ndarray], threads: int, seed: int = 0, dtype: str = "float32", device: str = "cpu"
) -> Callable[[], None]:
    """One call = one eager PyTorch step of the original: forward, composite loss, backward, AdamW.

    ``dtype="bfloat16"`` runs the model under autocast (parameters and BatchNorm statistics in float32, as
    the JAX side keeps them) and the losses in float32. On CUDA the images and weights are channels-last
    with cuDNN's autotuner on, PyTorch's fastest settings for convolutions.
    """
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    memory_format = torch.channels_last if device == "cuda" else torch.contiguous_format
    torch.backends.cudnn.benchmark = device == "cuda"
    model = torch_dsnn().to(device=device, memory_format=memory_format).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=1e-5, amsgrad=True)
    bce, smooth_l1 = torch.nn.BCELoss(), torch.nn.SmoothL1Loss()
    t = {key: torch.from_numpy(np.ascontiguousarray(value)).to(device) for key, value in batch.items()}
    x0, x1 = (
        t[key].permute(0, 3, 1, 2).contiguous(memory_format=memory_format) for key in ("image0", "image1")
    )
    same_sample, same_meta = t["same_sample"][:, None], t["same_meta"][:, None]
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def trial() -> None:
        optimizer.zero_grad()
        with autocast:
            outputs = model(x0, x1)
        p, p_img, p_rock, reg0, reg1 = (output.float() for output in outputs)
        loss_reg = smooth_l1(reg0, t["targets0"]) + smooth_l1(reg1, t["targets1"])
        loss = (
            bce(p, same_sample * same_meta) + bce(p_img, same_sample) + bce(p_rock, same_meta) + 10 * loss_reg
        )
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return trial


def jax_embed_trial(
    model: nn.Module, variables: Mapping[str, Any], images: np.ndarray, mesh: Mesh
) -> Callable[[], None]:
    """One call = the sharded DSNN embedding of ``images`` (NHWC), waited for."""
    sharding.check_divisible(len(images), mesh)
    placed = sharding.replicate(variables, mesh)
    device_images = sharding.shard_batch({"images": images}, mesh)["images"]
    embed_step = make_embed_step(mesh, model)
    return lambda: jax.block_until_ready(embed_step(placed, device_images))


def train_layouts(config: BenchConfig) -> dict[str, device_layout.Layout]:
    """The train step's layouts to measure: branch parallel (first) where the device count allows it,
    and data parallel."""
    devices = config.devices()
    layouts = {"data parallel": device_layout.plan(devices, config.batch, requested=len(devices))}
    branch = device_layout.plan(devices, config.batch, requested=len(devices), branch_parallel=True)
    return {"branch parallel": branch, **layouts} if branch.branch_parallel else layouts


def trial_name(layout_name: str, algorithm: str, algorithms: Sequence[str]) -> str:
    """A train-step trial's name in its row: the layout, and the convolution algorithm when several run."""
    return layout_name if len(algorithms) == 1 else f"{layout_name}, {algorithm} convolutions"


def train_rows(config: BenchConfig, image_size: int, threads: int) -> list[Row]:
    """Train-step and embedding rows at one image size (JAX, PyTorch and embedding trials interleaved)."""
    batch = pair_batch(config.batch, image_size, config.seed)
    layouts = train_layouts(config)
    # One initialisation serves all JAX trials (the algorithms share parameters): its compilation is a
    # good part of a short run.
    model, variables = jax_dsnn(config.dtype, image_size, config.seed, config.conv_algorithms[0])
    trials, trial_layouts = {}, {}
    for algorithm in config.conv_algorithms:
        algorithm_model = model.clone(backbone=functools.partial(model.backbone, conv_algorithm=algorithm))
        for layout_name, layout in layouts.items():
            name = trial_name(layout_name, algorithm, config.conv_algorithms)
            trials[name] = jax_train_trial(algorithm_model, variables, batch, layout)
            trial_layouts[name] = layout
    reference = ""
    if config.torch and _importable("torch") and _importable("torchvision"):
        device = torch_device()
        trials["torch"] = torch_train_trial(batch, threads, config.seed, config.dtype, device)
        precision = "bf16 autocast" if config.dtype == "bfloat16" else "fp32"
        reference = f"PyTorch eager {precision} on {device}"
    embed_images = pair_batch(config.embed_batch, image_size, config.seed + 1)["image0"]
    trials["embed"] = jax_embed_trial(model, variables, embed_images, config.mesh())
    times = interleaved_times(trials, config.repeats)

    pairs_per_s = {
        name: config.batch / median(times[name]) for name in (*trial_layouts, "torch") if name in times
    }
    rows = []
    for name, layout in trial_layouts.items():
        setting = f"{image_size}², batch {config.batch}, {config.dtype}, {name} on {layout.mesh.devices.size}"
        note = _peak_note(pairs_per_s[name], image_size, config.peak_tflops)
        has_torch = "torch" in pairs_per_s
        if has_torch:
            first, third = round_ratio_quartiles(times[name], times["torch"])
            note += f"; per-round ratio quartiles {first:.2f}–{third:.2f}×"
        rows.append(
            Row(
                "train step",
                setting,
                pairs_per_s[name],
                "pairs/s",
                reference,
                pairs_per_s.get("torch"),
                note if has_torch else f"{note}; PyTorch reference skipped",
            )
        )
    rows.append(
        Row(
            "embed",
            f"{image_size}², batch {config.embed_batch}",
            config.embed_batch / median(times["embed"]),
            "images/s",
        )
    )
    return rows


def _peak_note(pairs_per_s: float, image_size: int, peak_tflops: float | None) -> str:
    tflops = pairs_per_s * GFLOP_PER_PAIR_224 * (image_size / 224) ** 2 / 1e3
    note = f"{tflops:.3g} TFLOP/s"
    if peak_tflops:
        note += f" = {tflops / peak_tflops:.1%} of {peak_tflops:g} TFLOP/s peak"
    return note


# ---------------------------------------------------------------------------------------------- search


def search_data(n: int, dim: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random float32 database and queries (standard normal)."""
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n, dim), dtype=np.float32),
        rng.standard_normal((n_queries, dim), dtype=np.float32),
    )


def faiss_worker() -> None:
    """FAISS side of the search benchmark, run in its own process (``OPENBLAS_CORETYPE`` set or not).

    argv: database .npy, queries .npy, k. Builds ``IndexFlatL2`` with the BLAS threshold lowered, then
    answers one JSON line per request line ``{"n": queries}`` with the trial's seconds and, when asked
    (``"ids": true``), the indices found.
    """
    import faiss

    faiss.cvar.distance_compute_blas_threshold = FAISS_BLAS_THRESHOLD
    database, queries, k = np.load(sys.argv[1]), np.load(sys.argv[2]), int(sys.argv[3])
    index = faiss.IndexFlatL2(database.shape[1])
    index.add(database)
    print(json.dumps({"ready": True, "threads": faiss.omp_get_max_threads()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        batch = np.ascontiguousarray(queries[: request["n"]])
        start = time.perf_counter()
        _, ids = index.search(batch, k)
        reply: dict[str, Any] = {"seconds": time.perf_counter() - start}
        if request.get("ids"):
            reply["ids"] = ids.tolist()
        print(json.dumps(reply), flush=True)


class FaissProcess:
    """A :func:`faiss_worker` subprocess with one OpenBLAS core type; call it like a trial."""

    def __init__(self, database_path: Path, queries_path: Path, k: int, coretype: str):
        env = dict(os.environ)
        env.pop("OPENBLAS_CORETYPE", None)
        if coretype != "default":
            env["OPENBLAS_CORETYPE"] = coretype
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRIPTS), env.get("PYTHONPATH")]))
        code = "from benchmark_lib import faiss_worker; faiss_worker()"
        self._process = subprocess.Popen(
            [sys.executable, "-c", code, str(database_path), str(queries_path), str(k)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def wait_ready(self) -> FaissProcess:
        """Waits until the index is built (workers start in parallel, then each is waited for)."""
        self.threads = self._read()["threads"]
        return self

    def _read(self) -> dict[str, Any]:
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"FAISS worker exited with {self._process.wait()}")
        return json.loads(line)

    def search(self, n: int, ids: bool = False) -> dict[str, Any]:
        """Times one search of the first ``n`` queries in the worker."""
        self._process.stdin.write(json.dumps({"n": n, "ids": ids}) + "\n")
        self._process.stdin.flush()
        return self._read()

    def close(self) -> None:
        """Ends the worker (end of input) and waits for it."""
        self._process.stdin.close()
        self._process.wait(timeout=60)


def same_sets_fraction(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of rows whose sets of indices are identical (order ignored)."""
    return float(np.mean([set(x) == set(y) for x, y in zip(a.tolist(), b.tolist(), strict=True)]))


def search_rows(config: BenchConfig) -> list[Row]:
    """Search rows: KnnIndex against the faster FAISS setting per query count, trials interleaved."""
    database, queries = search_data(config.database, config.dim, max(config.queries), config.seed)
    index = KnnIndex(database, mesh=config.mesh())
    jax.block_until_ready(index._placed.vectors)
    use_faiss = config.faiss and _importable("faiss")
    rows = []
    with tempfile.TemporaryDirectory(prefix="rockir_bench_") as tmp:
        workers = {}
        if use_faiss:
            np.save(Path(tmp) / "db.npy", database)
            np.save(Path(tmp) / "q.npy", queries)
            started = {
                coretype: FaissProcess(Path(tmp) / "db.npy", Path(tmp) / "q.npy", config.k, coretype)
                for coretype in FAISS_CORETYPES
            }
            workers = {coretype: worker.wait_ready() for coretype, worker in started.items()}
        try:
            for n in config.queries:
                rows.append(_search_row(config, index, queries[:n], workers))
        finally:
            for worker in workers.values():
                worker.close()
    return rows


def _search_row(config: BenchConfig, index: KnnIndex, queries: np.ndarray, workers) -> Row:
    n = len(queries)
    jax_ids = index.search(queries, config.k)[1]
    agreement = {
        name: same_sets_fraction(jax_ids, np.asarray(w.search(n, ids=True)["ids"]))
        for name, w in workers.items()
    }
    times: dict[str, list[float]] = {"jax": [], **{name: [] for name in workers}}
    for _ in range(config.search_repeats):
        start = time.perf_counter()
        index.search(queries, config.k)
        times["jax"].append(time.perf_counter() - start)
        for name, worker in workers.items():
            times[name].append(worker.search(n)["seconds"])
    setting = f"{n} queries, {config.database:,}×{config.dim}, k={config.k}"
    ours = n / median(times["jax"])
    if not workers:
        return Row("search", setting, ours, "queries/s", note="FAISS reference skipped")
    per_setting = {name: n / median(times[name]) for name in workers}
    best = max(per_setting, key=per_setting.get)
    note = ", ".join(f"FAISS {name} {qps:,.0f}/s" for name, qps in per_setting.items())
    note += "; top-10 sets identical: " + ", ".join(
        f"{frac:.1%} ({name})" for name, frac in agreement.items()
    )
    return Row(
        "search",
        setting,
        ours,
        "queries/s",
        f"FAISS best ({best})",
        per_setting[best],
        note,
        agreement=min(agreement.values()),
    )


# -------------------------------------------------------------------------------------------- pipeline


def pipeline_rows(config: BenchConfig, image_size: int, step_pairs_per_s: float) -> list[Row]:
    """Input-pipeline pairs/s with each worker count, against the train step's consumption."""
    root = Path(config.data_root)
    index = data.index_dataset(root, root / "metadata.csv")
    rows = []
    with tempfile.TemporaryDirectory(prefix="rockir_bench_tfds_") as cache:
        source = data.load_split(data.build_image_cache(index, image_size, cache), "train")
        for workers in config.pipeline_workers:
            rate = measure_pairs_per_second(source, config.batch, workers, config.pipeline_batches)
            rows.append(
                Row(
                    "pipeline",
                    f"{image_size}², batch {config.batch}, {workers} workers",
                    rate,
                    "pairs/s",
                    "train step consumption",
                    step_pairs_per_s,
                )
            )
    return rows


def write_ct_slices(root: Path, slices: int, size: int, seed: int) -> Path:
    """``slices`` smooth 16-bit ``size``² TIFF slices in the training layout (32 per sample), as
    micro-CT scanners write them, and their CSV; returns the CSV."""
    rng = np.random.default_rng(seed)
    rows = []
    for number in range(0, slices, 32):
        sample = f"CT{number // 32:04d}"
        folder = root / "train" / sample
        folder.mkdir(parents=True)
        for k in range(min(32, slices - number)):
            coarse = Image.fromarray(rng.random((size // 8, size // 8), dtype=np.float32) * 65535)
            pixels = np.asarray(coarse.resize((size, size), Image.BILINEAR)).astype(np.uint16)
            Image.fromarray(pixels).save(folder / f"{sample}_{k:03d}.tif")
        rows.append(f"{sample},0.2,100.0,1.0")
    csv = root / "metadata.csv"
    csv.write_text("Created_label,Porosity,Permeability,Pixelsize\n" + "\n".join(rows) + "\n")
    return csv


def cache_rows(config: BenchConfig, image_size: int) -> list[Row]:
    """Cache-build images/s with each worker count (fresh builds, interleaved), against the first:
    on the bundled PNGs and on :attr:`BenchConfig.cache_slices` generated 16-bit TIFF slices."""
    with tempfile.TemporaryDirectory(prefix="rockir_bench_cache_") as scratch:
        scratch = Path(scratch)
        bundled = Path(config.data_root)
        size = config.cache_slice_size
        sources = {
            "bundled 128² PNG": data.index_dataset(bundled, bundled / "metadata.csv"),
            f"{size}² 16-bit TIFF": data.index_dataset(
                scratch / "ct", write_ct_slices(scratch / "ct", config.cache_slices, size, config.seed)
            ),
        }
        builds = iter(range(10**9))  # every trial builds into a new directory: no cache hit
        workers = config.cache_workers or tuple(
            w for w in (1, 2, 4, 8, 16, 32, 64) if w <= runtime.cpu_count()
        )
        rows = []
        for name, index in sources.items():

            def build(count: int, index: data.DatasetIndex = index) -> Path:
                return data.build_image_cache(index, image_size, scratch / str(next(builds)), workers=count)

            images = sum(len(table) for table in index.splits.values())
            build(max(workers))  # warm-up: starts the workers' fork server and fills the page cache
            times: dict[int, list[float]] = {w: [] for w in workers}
            for _ in range(config.cache_repeats):  # rounds alternate between worker counts
                for w in workers:
                    start = time.perf_counter()
                    build(w)
                    times[w].append(time.perf_counter() - start)
            rates = {w: images / median(t) for w, t in times.items()}
            rows += [
                Row(
                    "cache build",
                    f"{name} → {image_size}², {images} images, {w} worker{'s' if w > 1 else ''}",
                    rate,
                    "images/s",
                    f"{workers[0]} worker",
                    rates[workers[0]],
                )
                for w, rate in rates.items()
            ]
    return rows


# ------------------------------------------------------------------------------------------- serve


def serve_rows(config: BenchConfig) -> list[Row]:
    """Latency of ``POST /api/search`` through the search page's ASGI app: a bundled slice against an
    index of :attr:`BenchConfig.serve_database` random embeddings, embedded by a randomly initialised
    DSNN at the first image size with 1 and with 8 test-time orientations; one client, then
    :attr:`BenchConfig.serve_clients` at once. Medians (p50) in ms, p95 in the note."""
    with warnings.catch_warnings():
        # Starlette's in-process client still runs on httpx; the requests go through the same ASGI app.
        warnings.filterwarnings("ignore", message=".*httpx")
        from starlette.testclient import TestClient

    from rockir_jax.retrieval import RetrievalIndex
    from rockir_jax.retrieval.embed import ORIENTATIONS
    from rockir_jax.retrieval.loading import LoadedModel, with_orientations
    from rockir_jax.serve import create_app

    size = config.image_sizes[0]
    model, variables = jax_dsnn(config.dtype, size, config.seed, config.conv_algorithms[0])
    identity = {"model": "dsnn", "backbone": "resnet18", "image_size": size, "seed": config.seed}
    plain = LoadedModel(model, jax.tree.map(np.asarray, variables), size, identity)
    rng = np.random.default_rng(config.seed)
    n = config.serve_database
    embeddings = rng.standard_normal((n, 512)).astype(np.float32)
    samples = np.array([f"S{i // 12:05d}" for i in range(n)])
    query = sorted((Path(config.data_root) / "db_test").glob("*.png"))[0]
    files = {"image": (query.name, query.read_bytes(), "image/png")}
    rows = []
    for orientations in ORIENTATIONS:
        loaded = with_orientations(plain, orientations)
        index = RetrievalIndex(
            embeddings=embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True),
            paths=np.array([f"row{i}.png" for i in range(n)]),
            samples=samples,
            reservoirs=np.array([s[:3] for s in samples]),
            model=loaded.identity,
        )
        app = create_app(loaded, index)
        with TestClient(app, base_url="http://127.0.0.1:8000") as client:  # a host the page serves

            def request(client: TestClient = client) -> float:
                start = time.perf_counter()
                response = client.post("/api/search", files=files, data={"k": "10"})
                response.raise_for_status()
                return time.perf_counter() - start

            request()
            for clients in (1, config.serve_clients):
                with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                    seconds = list(pool.map(lambda _: request(), range(config.serve_requests)))
                p50, p95 = (1000 * float(np.percentile(seconds, q)) for q in (50, 95))
                setting = (
                    f"POST /api/search, {n:,} images, {size}², {orientations} orientation(s), k=10, "
                    f"{clients} client(s)"
                )
                note = f"p95 {p95:.0f} ms over {config.serve_requests} requests"
                rows.append(Row("serve", setting, p50, "ms", note=note))
    return rows


# ----------------------------------------------------------------------------------------------- run


def run(config: BenchConfig) -> list[Row]:
    """All benchmarks of ``config``; rows in table order."""
    threads = runtime.cpu_count()
    rows: list[Row] = []
    for size in config.image_sizes:
        size_rows = train_rows(config, size, threads)
        rows += size_rows
        rows += pipeline_rows(config, size, size_rows[0].ours)
        rows += cache_rows(config, size)
    rows += search_rows(config)
    return rows


def machine_info() -> dict[str, str]:
    """CPU model, cores, AVX-512 support, JAX device kind and count, library versions."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
        platform.processor() or "unknown",
    )
    versions = {"jax": jax.__version__, **{name: _version(name) for name in ("torch", "faiss")}}
    return {
        "cpu": model,
        "cores": str(runtime.cpu_count()),
        "avx512": "yes" if "avx512f" in cpuinfo else "no",
        "device_kind": jax.devices()[0].device_kind,
        "devices": str(jax.device_count()),
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items() if v),
    }


def _version(module: str) -> str:
    if not _importable(module):
        return ""
    return str(getattr(__import__(module), "__version__", "?"))


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def format_table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table (medians; ratio = ours / reference)."""
    lines = [
        "| benchmark | setting | ours (median) | reference | reference (median) | ratio | notes |",
        "|---|---|---:|---|---:|---:|---|",
    ]
    for row in rows:
        ref_value = "" if row.reference_value is None else f"{row.reference_value:,.4g} {row.unit}"
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}×"
        lines.append(
            f"| {row.benchmark} | {row.setting} | {row.ours:,.4g} {row.unit} | {row.reference} | "
            f"{ref_value} | {ratio} | {row.note} |"
        )
    return "\n".join(lines)


def format_report(rows: Sequence[Row], info: Mapping[str, str], command: str, elapsed_s: float) -> str:
    """A dated Markdown block for docs/BENCHMARKS.md: machine, device, command and the table."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"## {now}\n\n"
        f"- machine: {info['cpu']}, {info['cores']} cores, AVX-512: {info['avx512']}\n"
        f"- device kind: {info['device_kind']} ({info['devices']} device(s)); {info['versions']}\n"
        f"- command: `{command}` ({elapsed_s:.0f} s)\n\n"
        f"{format_table(rows)}\n"
    )


BENCHMARKS_HEADER = """# Benchmarks

Written by `scripts/benchmark.py`: each block is one run, every comparison measured side by side with
repetitions interleaved; figures are medians, ratio = ours / reference (> 1 means rockir_jax is faster).
Absolute numbers on a shared machine are noisy; the ratios are what the run compares.
"""


def append_report(path: str | Path, report: str) -> None:
    """Appends ``report`` to the Markdown file at ``path``, creating it with its header if needed."""
    path = Path(path)
    text = path.read_text() if path.exists() else BENCHMARKS_HEADER
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n\n" + report)
