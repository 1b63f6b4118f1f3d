"""Synthetic digital rocks: 3-D pore/solid volumes, physics-derived metadata, micro-CT-like slices.

A *reservoir* (:mod:`~rockir_jax.synth.reservoirs`) is one volume-generator family
(:mod:`~rockir_jax.synth.volumes`) with its own parameter ranges, voxel size and mineral mix; a *sample* is
one volume drawn with its own seed (:mod:`~rockir_jax.synth.dataset`). Porosity and permeability come from
:mod:`rockir_jax.physics`, not from the generator's knobs; slices normal to the flow axis are rendered as
8-bit micro-CT-like images (:mod:`~rockir_jax.synth.render`). Generating needs the ``synth`` extra
(porespy, openpnm); the rendering, naming and numpy-only generators work without it.
"""
