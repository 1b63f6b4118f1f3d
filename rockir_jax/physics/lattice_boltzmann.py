"""Stokes-flow permeability of a voxel volume by the lattice Boltzmann method, sharded over devices.

The model: D3Q19, two-relaxation-time (TRT) collision with the magic parameter Λ = 3/16 (so halfway
bounce-back puts a straight wall exactly half-way between a pore and a solid voxel, whatever the
viscosity), halfway bounce-back on solid voxels, a uniform body force along the flow axis (Guo's forcing
split into TRT's even and odd parts) and periodic boundaries on every face. The equilibrium is the
linear (Stokes) one, ``f_eq = w (ρ + 3 c·j)``: the solved equations are Stokes', so ``k`` does not depend
on the force's size and there is no Reynolds number to watch. Distributions are stored as deviations
from the rest state (``g = f − w``), which keeps float32 exact enough for velocities of any size.

Permeability in voxel² is ``k = ν ⟨j⟩ / F``: ``⟨j⟩`` the superficial (Darcy) momentum along the axis,
averaged over the whole volume, ``F`` the force per unit volume, ``ν = (τ − ½)/3`` (lattice units, ρ ≈ 1).

Time loop: ``check_every`` steps run in one jitted ``fori_loop``; between chunks the host compares the
flux with the previous chunk's and stops when the relative change is below ``tolerance``. k does not
depend on τ; τ = 1 is the default because it converged in the fewest steps on a 48³ sandstone crop
(800 steps, against 2,400 at τ = 0.6 and 2,600 at τ = 4).

Sharding: the volume is cut into slabs of planes along one spatial axis, one slab per device (a 1-D mesh
from :func:`rockir_jax.sharding.make_mesh`); streaming takes one plane from each neighbour by
``jax.lax.ppermute`` around a periodic ring. Padding the slab axis would change a periodic volume, so
instead the slab axis is one whose length the device count divides (the longest such axis, so the
exchanged planes are the smallest); when no axis divides, the largest device count that divides an
axis length is used. See :func:`slab_layout`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rockir_jax.physics.properties import spanning_pores

# rockir_jax.sharding's mesh axis; that module (which imports orbax) is imported only when solving, so
# that importing rockir_jax.physics stays light
DATA_AXIS = "data"

# D3Q19: rest, 6 faces, 12 edges; OPPOSITE[i] is the index of -VELOCITIES[i].
VELOCITIES = np.array(
    [
        *[[0, 0, 0]],
        *[[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
        *[[1, 1, 0], [-1, -1, 0], [1, -1, 0], [-1, 1, 0]],
        *[[1, 0, 1], [-1, 0, -1], [1, 0, -1], [-1, 0, 1]],
        *[[0, 1, 1], [0, -1, -1], [0, 1, -1], [0, -1, 1]],
    ],
    dtype=np.int64,
)
WEIGHTS = np.array([1 / 3] + [1 / 18] * 6 + [1 / 36] * 12)
OPPOSITE = np.array([int(np.flatnonzero((VELOCITIES == -c).all(axis=1))[0]) for c in VELOCITIES])
# TRT's magic parameter Λ = (τ+ − ½)(τ− − ½): 3/16 makes halfway bounce-back's wall position exact
# for Poiseuille flow and the solution independent of τ+ (the viscosity).
MAGIC_LAMBDA = 3 / 16
# The force density the solver applies. The equations are linear, so k does not depend on it.
DEFAULT_FORCE = 1e-5
DEFAULT_MAX_STEPS = 50_000
DEFAULT_CHECK_EVERY = 100


@dataclass(frozen=True)
class LbmResult:
    """The outcome of a solve: ``k_voxel2`` (voxel²; 0 when nothing percolates), ``steps`` run,
    whether the flux ``converged``, its relative change over the last ``check_every`` steps
    (``flux_change``; nan before two checks), the ``devices`` used, a readable ``message`` and, when
    asked for, the ``velocity`` along the axis on the solved volume (mirrored when ``mirror=True``)."""

    k_voxel2: float
    steps: int
    converged: bool
    flux_change: float
    devices: int
    message: str
    velocity: np.ndarray | None = None


def relaxation_rates(tau: float) -> tuple[float, float]:
    """TRT's (ω+, ω−) for ``τ+ = tau`` and Λ = 3/16."""
    if tau <= 0.5:
        raise ValueError(f"tau must be > 0.5, got {tau}")
    tau_minus = 0.5 + MAGIC_LAMBDA / (tau - 0.5)
    return 1.0 / tau, 1.0 / tau_minus


def viscosity(tau: float) -> float:
    """Kinematic viscosity ν = (τ − ½)/3 in lattice units."""
    return (tau - 0.5) / 3.0


def mirrored(pore: np.ndarray, axis: int) -> np.ndarray:
    """``pore`` followed by its mirror image along ``axis``: an open-ended sample made periodic, the
    usual digital-rock practice (the inlet and outlet faces meet their own images)."""
    return np.concatenate([pore, np.flip(pore, axis=axis)], axis=axis)


def slab_layout(shape: Sequence[int], device_count: int) -> tuple[int, int]:
    """``(slab axis, devices)`` for a volume of ``shape`` on up to ``device_count`` devices.

    The rule: the largest device count ``d ≤ device_count`` that divides some axis length; of the axes
    ``d`` divides, the longest (the first on ties). With one device the slab axis is the longest axis.
    """
    for count in range(min(device_count, max(shape)), 0, -1):
        axes = [a for a, n in enumerate(shape) if n % count == 0]
        if axes:
            return max(axes, key=lambda a: (shape[a], -a)), count
    raise AssertionError("unreachable: 1 divides every length")


# --- the lattice step ---------------------------------------------------------------------------


# The collision is linear in g (Stokes equilibrium), so it is one 19×19 matrix, L = I − ω+ EVEN − ω− ODD:
# EVEN takes a population's even part minus its equilibrium w ρ, ODD its odd part minus 3 w c·(Σ g c).
# The force: Guo's momentum j = Σ g c + F/2 in the odd equilibrium gives ω− · 3 w c·F/2, his source
# (1 − ω−/2) 3 w c·F the rest (its even part vanishes with the Stokes equilibrium): 3 w c·F in all,
# whatever ω−, added by _stream. One matrix product runs several times faster on CPU than the same
# algebra written out (XLA fuses the 19 separate expressions poorly).
_IDENTITY = np.eye(19)
_EVEN = (_IDENTITY + _IDENTITY[OPPOSITE]) / 2 - np.outer(WEIGHTS, np.ones(19))
_ODD = (_IDENTITY - _IDENTITY[OPPOSITE]) / 2 - 3 * WEIGHTS[:, None] * (VELOCITIES @ VELOCITIES.T)


def collision_matrix(omega_p: jax.Array | float, omega_m: jax.Array | float, dtype=jnp.float32) -> jax.Array:
    """The TRT collision of the Stokes equilibrium as a matrix: ``g* = L g`` (+ the force source)."""
    return (
        jnp.asarray(_IDENTITY, dtype)
        - jnp.asarray(omega_p, dtype) * jnp.asarray(_EVEN, dtype)
        - jnp.asarray(omega_m, dtype) * jnp.asarray(_ODD, dtype)
    )


def _stream(post: jax.Array, bits: jax.Array, source: jax.Array, devices: int) -> jax.Array:
    """Streaming ``g_i(x + c_i) ← g*_i(x)`` with halfway bounce-back and the force, on this device's slab.

    ``post`` is ``L g`` (19, *slab), the collision without its force term; that term, the constant
    ``source_i = 3 w_i c_i·F`` on pore voxels, is added here where each population lands, so that the
    collision stays one matrix product. Along the slab axis (array axis 0) each device takes one plane
    from its neighbours around a periodic ring; the other two axes are whole on every device. Where
    ``x − c_i`` is solid (bit ``i − 1`` of ``bits``) the population comes back reflected,
    ``g_i(x) ← g*_opp(i)(x)``. Solid voxels (bit 18 clear) are kept at rest, g = 0, so ``L g`` is 0 there.
    """
    up = [i for i in range(19) if VELOCITIES[i, 0] == 1]
    down = [i for i in range(19) if VELOCITIES[i, 0] == -1]
    last = post[np.array(up), -1]
    first = post[np.array(down), 0]
    if devices > 1:
        last = jax.lax.ppermute(last, DATA_AXIS, [(d, (d + 1) % devices) for d in range(devices)])
        first = jax.lax.ppermute(first, DATA_AXIS, [(d, (d - 1) % devices) for d in range(devices)])
    pore = ((bits >> _PORE_BIT) & 1).astype(bool)
    zero = jnp.zeros((), post.dtype)
    out = [post[0]]
    for i in range(1, 19):
        c = VELOCITIES[i]
        x = post[i]
        if c[0] == 1:
            x = jnp.concatenate([last[up.index(i)][None], x[:-1]], axis=0)
        elif c[0] == -1:
            x = jnp.concatenate([x[1:], first[down.index(i)][None]], axis=0)
        for d in (1, 2):
            if c[d]:
                x = jnp.roll(x, int(c[d]), axis=d)
        o = int(OPPOSITE[i])
        reflected = ((bits >> (i - 1)) & 1).astype(bool)
        x = jnp.where(reflected, post[o] + source[o], x + source[i])
        out.append(jnp.where(pore, x, zero))
    return jnp.stack(out)


# bit of ``lattice_bits`` that marks pore voxels; bits 0–17 mark a solid upstream neighbour
_PORE_BIT = 18


def lattice_bits(pore: np.ndarray) -> np.ndarray:
    """Per voxel, bit ``i − 1`` set when ``x`` is pore and ``x − c_i`` solid (periodic), i = 1…18,
    and bit 18 set on pore voxels: all the geometry a step needs, in 4 bytes a voxel."""
    solid = ~pore
    bits = pore.astype(np.uint32) << np.uint32(_PORE_BIT)
    for i in range(1, 19):
        upstream_solid = np.roll(solid, tuple(int(v) for v in VELOCITIES[i]), axis=(0, 1, 2))
        bits |= (upstream_solid & pore).astype(np.uint32) << np.uint32(i - 1)
    return bits


@functools.lru_cache(maxsize=16)
def _programs(mesh: Mesh, flow: int):
    """Jitted programs on ``mesh`` for a force along array axis ``flow``: ``run(g, bits, steps,
    constants)`` → (state after ``steps`` steps, per-plane sums of the momentum along ``flow``) and
    ``velocity(g, bits, force)``; ``constants`` = (ω+, ω−, F), traced so that τ and F do not recompile."""
    devices = mesh.devices.size
    field = P(DATA_AXIS)
    state = P(None, DATA_AXIS)

    def momentum(g, bits, force):
        """Guo's momentum along ``flow``, Σ g c + F/2, on pore voxels."""
        pore = ((bits >> _PORE_BIT) & 1).astype(g.dtype)
        j = sum(int(VELOCITIES[i, flow]) * g[i] for i in range(19) if VELOCITIES[i, flow])
        return (j + 0.5 * force) * pore

    def run(g, bits, steps, constants):
        matrix = collision_matrix(constants[0], constants[1], g.dtype)
        force = constants[2].astype(g.dtype)
        source = jnp.asarray(3.0 * WEIGHTS * VELOCITIES[:, flow], g.dtype) * force

        def step(_, g):
            # the collision without its force term, one matrix product; streaming adds the force
            post = jnp.einsum("ik,k...->i...", matrix, g)
            return _stream(post, bits, source, devices)

        g = jax.lax.fori_loop(0, steps, step, g)
        # per-plane sums, added up on the host in float64: one float32 sum over 10⁷ voxels would be
        # too coarse for a 1e-5 convergence test
        return g, jnp.sum(jnp.sum(momentum(g, bits, force), axis=2), axis=1)

    run_sharded = jax.shard_map(
        run, mesh=mesh, in_specs=(state, field, P(), P()), out_specs=(state, field), check_vma=False
    )
    velocity = jax.shard_map(
        momentum, mesh=mesh, in_specs=(state, field, P()), out_specs=field, check_vma=False
    )
    return jax.jit(run_sharded, donate_argnums=0), jax.jit(velocity)


def _place(array: np.ndarray, mesh: Mesh, spec: P) -> jax.Array:
    """A host array (whole on every process) as a global array split by ``spec``."""
    sharding = NamedSharding(mesh, spec)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _gather(array: jax.Array) -> np.ndarray:
    """A global array as one host array on every process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)


class Lattice:
    """A periodic volume laid out for the solver on ``devices``: the slab axis first, split over a mesh.

    ``pore`` is solved as it is (no mirroring or trimming) with body force ``force`` along ``axis``,
    relaxation time ``tau`` and ``dtype`` "float32" or "float64" (float64 needs ``jax.enable_x64``).
    :meth:`rest` gives the fluid at rest, :meth:`run` advances a state: for benchmarks and tools that
    drive the steps themselves."""

    def __init__(
        self,
        pore: np.ndarray,
        axis: int,
        force: float,
        tau: float,
        dtype: str,
        devices: Sequence[jax.Device] | None,
    ):
        from rockir_jax.sharding import make_mesh

        devices = list(jax.devices() if devices is None else devices)
        self.slab_axis, count = slab_layout(pore.shape, len(devices))
        self.mesh = make_mesh(devices[:count])
        # the slab axis first, the others in their order
        self.order = [self.slab_axis] + [a for a in range(3) if a != self.slab_axis]
        local = np.ascontiguousarray(np.transpose(pore, self.order))
        self.shape = local.shape
        self.dtype = dtype
        self.pore = local
        self.bits = _place(lattice_bits(local), self.mesh, P(DATA_AXIS))
        self.constants = np.array([*relaxation_rates(tau), force], dtype)
        self.programs = _programs(self.mesh, self.order.index(axis))

    @property
    def devices(self) -> int:
        return self.mesh.devices.size

    def run(self, g: jax.Array, steps: int) -> tuple[jax.Array, float]:
        """``steps`` more steps; the new state and the mean momentum along the axis (the flux)."""
        g, planes = self.programs[0](g, self.bits, np.int32(steps), self.constants)
        return g, float(np.sum(_gather(planes), dtype=np.float64)) / math.prod(self.shape)

    def rest(self) -> jax.Array:
        """The fluid at rest (g = 0), created in place on the devices."""
        zeros = jax.jit(
            lambda: jnp.zeros((19, *self.shape), self.dtype),
            out_shardings=NamedSharding(self.mesh, P(None, DATA_AXIS)),
        )
        return zeros()

    def _populations(self) -> np.ndarray:
        """For each population of the transposed lattice, the caller's population moving the same way:
        local velocity component a is the caller's component ``order[a]``."""
        caller = VELOCITIES[:, np.argsort(self.order)]
        return np.array([int(np.flatnonzero((VELOCITIES == c).all(axis=1))[0]) for c in caller])

    def from_distributions(self, f: np.ndarray) -> jax.Array:
        g = (f - WEIGHTS.reshape(19, 1, 1, 1))[self._populations()]
        g = np.transpose(g, [0, *(1 + a for a in self.order)]) * self.pore  # solid voxels at rest
        g = np.ascontiguousarray(g, dtype=self.dtype)
        return _place(g, self.mesh, P(None, DATA_AXIS))

    def to_distributions(self, g: jax.Array) -> np.ndarray:
        g = np.transpose(_gather(g), [0, *(1 + a for a in np.argsort(self.order))]).astype(np.float64)
        f = np.empty_like(g)
        f[self._populations()] = g
        return f + WEIGHTS.reshape(19, 1, 1, 1)

    def velocity(self, g: jax.Array) -> np.ndarray:
        """Momentum along the axis per voxel (ρ ≈ 1: the velocity), in the caller's axis order."""
        j = self.programs[1](g, self.bits, self.constants[2])
        return np.transpose(_gather(j), np.argsort(self.order))


def _precision(dtype: str):
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


# --- public API ---------------------------------------------------------------------------------


def simulate(
    pore: np.ndarray,
    steps: int,
    axis: int = 0,
    *,
    force: float = DEFAULT_FORCE,
    tau: float = 1.0,
    dtype: str = "float32",
    devices: Sequence[jax.Device] | None = None,
    initial: np.ndarray | None = None,
) -> np.ndarray:
    """The distributions ``f`` (19, *shape, float64 on the host) after ``steps`` steps on ``pore`` as
    it is (periodic; no mirroring or cluster trimming), from rest or from ``initial``. Populations on
    solid voxels are meaningless. The low-level entry for tests and benchmarks."""
    pore = np.ascontiguousarray(pore, dtype=bool)
    with _precision(dtype):
        lattice = Lattice(pore, axis, force, tau, dtype, devices)
        g = lattice.rest() if initial is None else lattice.from_distributions(np.asarray(initial))
        g, _ = lattice.run(g, steps)
        return lattice.to_distributions(g)


def permeability_lbm(
    pore: np.ndarray,
    axis: int = 0,
    *,
    mirror: bool = True,
    tolerance: float = 1e-5,
    max_steps: int = DEFAULT_MAX_STEPS,
    check_every: int = DEFAULT_CHECK_EVERY,
    tau: float = 1.0,
    force: float = DEFAULT_FORCE,
    dtype: str = "float32",
    devices: Sequence[jax.Device] | None = None,
    progress: Callable[[int, float], None] | None = None,
    max_seconds: float | None = None,
    return_velocity: bool = False,
) -> LbmResult:
    """Absolute permeability of ``pore`` (True = pore) along ``axis`` in voxel², by lattice Boltzmann.

    Only the pores spanning the two faces normal to ``axis`` are solved; with none, k = 0 and nothing
    runs. ``mirror`` appends the volume mirrored along ``axis`` so an open-ended sample becomes periodic;
    turn it off for volumes that are periodic already. Steps run in jitted chunks of ``check_every``;
    between chunks ``progress(step, relative flux change)`` is called, and the solve stops when the
    change is below ``tolerance``. Reaching ``max_steps`` first gives ``converged=False`` and a message
    (nothing is raised); so does running past ``max_seconds`` of wall time. ``devices`` (default: all)
    share the volume in slabs, see :func:`slab_layout`.
    """
    pore = np.ascontiguousarray(pore, dtype=bool)
    if pore.ndim != 3:
        raise ValueError(f"pore must be 3-D, got shape {pore.shape}")
    if check_every < 1 or max_steps < 1:
        raise ValueError(f"check_every and max_steps must be ≥ 1, got {check_every} and {max_steps}")
    spanning = spanning_pores(pore, axis)
    if not spanning.any():
        return LbmResult(0.0, 0, True, 0.0, 0, "no pore cluster spans the volume: k = 0")
    volume = mirrored(spanning, axis) if mirror else spanning
    with _precision(dtype):
        lattice = Lattice(volume, axis, force, tau, dtype, devices)
        g = lattice.rest()
        steps, flux, change, converged, timed_out = 0, math.nan, math.nan, False, False
        start = time.perf_counter()
        while steps < max_steps:
            chunk = min(check_every, max_steps - steps)
            previous = flux
            g, flux = lattice.run(g, chunk)
            steps += chunk
            if not math.isfinite(flux):
                break
            if math.isfinite(previous):
                change = abs(flux - previous) / max(abs(flux), np.finfo(np.float64).tiny)
            if progress is not None:
                progress(steps, change)
            converged = change < tolerance
            timed_out = max_seconds is not None and time.perf_counter() - start > max_seconds
            if converged or timed_out:
                break
        k = viscosity(tau) * flux / force
        velocity = lattice.velocity(g) if return_velocity else None
    if converged:
        message = f"converged in {steps} steps (flux change {change:.2e} < {tolerance:.0e})"
    elif not math.isfinite(flux):
        message = f"diverged after {steps} steps (the flux is {flux})"
    elif timed_out:
        message = (
            f"not converged: max_seconds={max_seconds:g} reached after {steps} steps with relative flux "
            f"change {change:.2e} (tolerance {tolerance:.0e}); k = {k:.4g} voxel² is provisional"
        )
    else:
        message = (
            f"not converged: max_steps={max_steps} reached with relative flux change {change:.2e} "
            f"over the last {check_every} steps (tolerance {tolerance:.0e}); k = {k:.4g} voxel² is "
            "provisional: raise max_steps"
        )
    return LbmResult(float(k), steps, converged, change, lattice.devices, message, velocity)


def permeability_voxel2_lbm(pore: np.ndarray, axis: int = 0) -> float:
    """Permeability along ``axis`` in voxel², 0 when nothing percolates: the lattice Boltzmann
    counterpart of :func:`rockir_jax.physics.flow.permeability_voxel2`, with the defaults of
    :func:`permeability_lbm` (mirrored, all devices). Unconverged solves return their last k."""
    return permeability_lbm(pore, axis).k_voxel2
