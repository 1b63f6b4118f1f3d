"""3-D micro-CT volumes to a training set: readers, slicing, and volume_dataset (``rockir-prepare``:
slices and physical properties, written by :mod:`rockir_jax.data.writer`)."""
