"""Lattice Boltzmann flow benchmark: python scripts/benchmark_flow.py --out PNG [options].

1. Speed: million lattice updates per second (MLUPS) of the JAX solver, on one device and on all,
   against a float64 numpy reference of the same D3Q19 TRT step (``np.roll`` streaming), interleaved in
   one process on a ``--mlups-size``³ crop of a bundled volume; the two are also compared for agreement.
2. k by lattice Boltzmann against the pore network's (``rockir_jax.physics.permeability_voxel2``) on
   ``--samples`` volumes of the bundled set rebuilt from its ``generation.json`` and cropped to
   ``--size``³ (the first crop, centre then corners, that percolates): a log-log scatter plot to ``--out``.
3. Time to converge (default tolerance, mirrored) on ``--converge-sizes`` crops of the first volume (256 =
   the whole bundled volume), each capped at ``--time-limit`` seconds.

Volumes are rebuilt with the synth extra (porespy, openpnm); rebuilding one 256³ volume takes ~45 s
on 2 cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="scatter plot PNG (docs/flow_lbm_vs_network.png)")
    parser.add_argument("--data", default=str(ROOT / "datasets" / "synthetic_rocks"), help="generated set")
    parser.add_argument("--sample", help="volume of the speed and convergence rows (default: the first)")
    parser.add_argument("--mlups-size", type=int, default=64, help="edge of the speed benchmark's crop")
    parser.add_argument("--mlups-steps", type=int, default=20, help="JAX steps per timed repetition")
    parser.add_argument("--reference-steps", type=int, default=2, help="numpy steps per timed repetition")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions, interleaved")
    parser.add_argument("--converge-sizes", type=int, nargs="*", default=[128, 256], help="crop edges")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds per convergence run")
    parser.add_argument(
        "--samples", type=int, default=6, help="bundled volumes in the scatter plot (0: none)"
    )
    parser.add_argument("--size", type=int, default=32, help="edge of the scatter plot's crops")
    parser.add_argument("--cpu-devices", type=int, help="JAX CPU devices (default: one per core)")
    parser.add_argument("--json", help="also write every number to this JSON file")
    return parser.parse_args(argv)


# --- the float64 numpy reference ---------------------------------------------------------------------

REF_C = np.array([c for c in itertools.product((-1, 0, 1), repeat=3) if sum(map(abs, c)) <= 2])
REF_W = np.array([{0: 1 / 3, 1: 1 / 18, 2: 1 / 36}[int(np.abs(c).sum())] for c in REF_C])
REF_OPP = np.array([int(np.flatnonzero((REF_C == -c).all(axis=1))[0]) for c in REF_C])


def reference_step(f: np.ndarray, pore: np.ndarray, force: np.ndarray, tau: float) -> np.ndarray:
    """One D3Q19 TRT step (Λ = 3/16, Stokes equilibrium, Guo forcing, halfway bounce-back, periodic),
    written out plainly in float64 numpy: the same model as rockir_jax.physics.lattice_boltzmann."""
    omega_p = 1 / tau
    omega_m = 1 / (0.5 + (3 / 16) / (tau - 0.5))
    body = force[:, None, None, None] * pore
    rho = f.sum(axis=0)
    j = np.einsum("id,i...->d...", REF_C, f) + 0.5 * body
    feq = REF_W[:, None, None, None] * (rho + 3 * np.einsum("id,d...->i...", REF_C, j))
    source = (1 - omega_m / 2) * 3 * REF_W[:, None, None, None] * np.einsum("id,d...->i...", REF_C, body)
    f_even, f_odd = (f + f[REF_OPP]) / 2, (f - f[REF_OPP]) / 2
    eq_even, eq_odd = (feq + feq[REF_OPP]) / 2, (feq - feq[REF_OPP]) / 2
    post = f - omega_p * (f_even - eq_even) - omega_m * (f_odd - eq_odd) + source
    new = np.empty_like(f)
    for i, c in enumerate(REF_C):
        shift = tuple(int(v) for v in c)
        from_solid = np.roll(~pore, shift, axis=(0, 1, 2))
        new[i] = np.where(from_solid, post[REF_OPP[i]], np.roll(post[i], shift, axis=(0, 1, 2)))
    return new


# --- volumes -------------------------------------------------------------------------------------------


def load_generation(data: Path) -> tuple[object, list[dict]]:
    from rockir_jax.synth.dataset import DatasetConfig

    record = json.loads((data / "generation.json").read_text())
    return DatasetConfig(**record["config"]), record["samples"]


def rebuild(config, record: dict) -> np.ndarray:
    from rockir_jax.synth.dataset import regenerate_volume

    return regenerate_volume(config, record).pore


def spanning_crop(pore: np.ndarray, size: int, axis: int = 0) -> tuple[np.ndarray, tuple[int, ...]]:
    """The first ``size``³ crop, centre first then the corners, with pores spanning ``axis``."""
    from rockir_jax.physics import spanning_pores

    n = pore.shape[0]
    starts = [(n - size) // 2] * 3, *itertools.product((0, n - size), repeat=3)
    for start in starts:
        crop = pore[tuple(slice(s, s + size) for s in start)]
        if spanning_pores(crop, axis).any():
            return crop, tuple(start)
    return crop, tuple(start)


# --- 1. speed ------------------------------------------------------------------------------------------


def speed_rows(pore: np.ndarray, args: argparse.Namespace) -> dict:
    """Interleaved MLUPS medians: JAX on 1 device and on all, numpy float64; and their agreement."""
    from rockir_jax.physics import lattice_boltzmann as lbm

    force, tau = 1e-5, 1.0
    all_devices = jax.devices()
    lattices = {"jax, 1 device": lbm.Lattice(pore, 0, force, tau, "float32", all_devices[:1])}
    if len(all_devices) > 1:
        lattice = lbm.Lattice(pore, 0, force, tau, "float32", all_devices)
        lattices[f"jax, {lattice.devices} devices"] = lattice
    states = {name: lattice.run(lattice.rest(), 1)[0] for name, lattice in lattices.items()}  # compiles
    f_ref = np.broadcast_to(REF_W[:, None, None, None], (19, *pore.shape)).copy()
    force_vector = np.array([force, 0.0, 0.0])
    times: dict[str, list[float]] = {name: [] for name in [*lattices, "numpy float64"]}
    for _ in range(args.repeats):
        for name, lattice in lattices.items():
            start = time.perf_counter()
            states[name], _ = lattice.run(states[name], args.mlups_steps)  # ends with a host sync
            times[name].append(time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(args.reference_steps):
            f_ref = reference_step(f_ref, pore, force_vector, tau)
        times["numpy float64"].append(time.perf_counter() - start)
    mlups = {}
    for name, samples in times.items():
        steps = args.reference_steps if name.startswith("numpy") else args.mlups_steps
        mlups[name] = pore.size * steps / statistics.median(samples) / 1e6
    # agreement: both from rest for the same steps
    steps = args.repeats * args.reference_steps
    f_jax = lbm.simulate(pore, steps, 0, force=force, tau=tau, devices=all_devices[:1])
    order = [int(np.flatnonzero((lbm.VELOCITIES == c).all(axis=1))[0]) for c in REF_C]
    deviation = np.abs(f_ref - REF_W[:, None, None, None])[:, pore].max()
    difference = np.abs(f_jax[order] - f_ref)[:, pore].max()
    return {
        "mlups": mlups,
        "agreement": {
            "steps": steps,
            "max_abs_difference": float(difference),
            "max_abs_deviation_from_rest": float(deviation),
        },
    }


# --- 2. time to converge -------------------------------------------------------------------------------


def converge_row(pore: np.ndarray, time_limit: float, label: str) -> dict:
    from tqdm import tqdm

    from rockir_jax.physics import permeability_lbm, porosity, spanning_pores

    bar = tqdm(desc=f"LBM {label}", unit=" steps", leave=False)

    def progress(step: int, change: float) -> None:
        bar.update(step - bar.n)
        bar.set_postfix(change=f"{change:.1e}")

    start = time.perf_counter()
    result = permeability_lbm(pore, 0, progress=progress, max_seconds=time_limit)
    seconds = time.perf_counter() - start
    bar.close()
    nodes = 2 * pore.size
    return {
        "volume": label,
        "porosity": porosity(pore),
        "spanning_porosity": porosity(spanning_pores(pore, 0)),
        "k_voxel2": result.k_voxel2,
        "steps": result.steps,
        "converged": result.converged,
        "flux_change": result.flux_change,
        "seconds": seconds,
        "devices": result.devices,
        "mlups_including_compile_and_checks": nodes * result.steps / seconds / 1e6 if result.steps else 0.0,
        "message": result.message,
    }


# --- 3. against the pore network -----------------------------------------------------------------------


def network_rows(config, records: list[dict], args: argparse.Namespace) -> list[dict]:
    from rockir_jax.physics import permeability_lbm, permeability_voxel2, quiet_network_tools

    quiet_network_tools()
    chosen = np.unique(np.linspace(0, len(records) - 1, args.samples).round().astype(int))
    rows = []
    for index in chosen:
        record = records[index]
        start = time.perf_counter()
        crop, origin = spanning_crop(rebuild(config, record), args.size)
        rebuilt = time.perf_counter() - start
        start = time.perf_counter()
        k_network = permeability_voxel2(crop, 0)
        network_seconds = time.perf_counter() - start
        start = time.perf_counter()
        result = permeability_lbm(crop, 0, max_seconds=args.time_limit)
        rows.append(
            {
                "sample": record["sample"],
                "reservoir": record["reservoir"],
                "origin": origin,
                "porosity": float(crop.mean()),
                "k_network": k_network,
                "k_lbm": result.k_voxel2,
                "lbm_steps": result.steps,
                "lbm_converged": result.converged,
                "lbm_seconds": time.perf_counter() - start,
                "network_seconds": network_seconds,
                "rebuild_seconds": rebuilt,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def scatter(rows: list[dict], path: str, size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    both = [r for r in rows if r["k_network"] > 0 and r["k_lbm"] > 0]
    fig, ax = plt.subplots(figsize=(5.2, 5))
    for reservoir in sorted({r["reservoir"] for r in both}):
        points = [r for r in both if r["reservoir"] == reservoir]
        ax.scatter([r["k_lbm"] for r in points], [r["k_network"] for r in points], label=reservoir, s=30)
    if both:
        values = [r[key] for r in both for key in ("k_lbm", "k_network")]
        low, high = min(values) / 1.5, max(values) * 1.5
        ax.plot([low, high], [low, high], "k--", lw=0.8, label="equal")
        ratio = np.exp(np.mean([np.log(r["k_network"] / r["k_lbm"]) for r in both]))
        ax.set_title(
            f"{len(both)} bundled volumes, {size}³ crops: network/LBM = {ratio:.2f}× (geo. mean)", fontsize=9
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("k, lattice Boltzmann (voxel²)")
    ax.set_ylabel("k, pore network (voxel²)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    from rockir_jax import runtime

    if args.cpu_devices:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    else:
        runtime.use_one_cpu_device_per_core()
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
        platform.processor() or "unknown",
    )
    report: dict = {
        "command": shlex.join(["python", "scripts/benchmark_flow.py", *argv]),
        "cpu": model,
        "cores": os.cpu_count(),
        "jax": jax.__version__,
        "devices": jax.device_count(),
        "load_average_at_start": os.getloadavg(),
    }
    config, records = load_generation(Path(args.data))
    record = next(r for r in records if r["sample"] == args.sample) if args.sample else records[0]
    start = time.perf_counter()
    volume = rebuild(config, record)
    report["volume"] = {
        "sample": record["sample"],
        "shape": volume.shape,
        "rebuild_seconds": time.perf_counter() - start,
    }
    print(json.dumps(report), flush=True)

    def save() -> None:  # after every section, so that a run cut short keeps what it measured
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1, default=str))

    crop, _ = spanning_crop(volume, args.mlups_size)
    report["speed"] = speed_rows(crop, args)
    print(json.dumps(report["speed"]), flush=True)
    save()

    if args.samples > 0:
        report["network"] = network_rows(config, records, args)
        scatter(report["network"], args.out, args.size)
        save()

    # the largest volumes last: a 256³ solve (mirrored, 33.5 M voxels) holds ~8 GB
    report["converge"] = []
    for size in args.converge_sizes:
        crop, origin = spanning_crop(volume, size)
        label = f"{record['sample']} {size}³ at {origin}, mirrored to {2 * size}×{size}×{size}"
        report["converge"].append(converge_row(crop, args.time_limit, label))
        print(json.dumps(report["converge"][-1]), flush=True)
        save()
    report["load_average_at_end"] = os.getloadavg()
    save()
    print(json.dumps({k: report[k] for k in ("command", "load_average_at_end")}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
