"""Synthetic digital rocks: 3-D pore/solid volumes, physics-derived metadata, micro-CT-like slices.

Each *reservoir* (:mod:`~rockir_jax.synth.reservoirs`) is one volume-generator family
(:mod:`~rockir_jax.synth.volumes`) with its own parameter ranges, voxel size and mineral mix; each
*sample* is one volume drawn with its own seed (:mod:`~rockir_jax.synth.dataset`). Porosity and
permeability come from :mod:`rockir_jax.physics`, so the metadata is physics, not a formula of the
generator's knobs. Slices perpendicular to the flow axis are rendered as 8-bit micro-CT-like images
(:mod:`~rockir_jax.synth.render`).

Needs the ``synth`` extra (porespy, openpnm) to generate; the rendering, naming and numpy-only
generators work without it.
"""
