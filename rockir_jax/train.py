"""``python -m rockir_jax.train``: the training command, :mod:`rockir_jax.cli.train` (``rockir-train``)."""

from rockir_jax.cli.train import main

if __name__ == "__main__":
    main()
