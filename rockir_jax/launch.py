"""``python -m rockir_jax.launch``: the local multi-process launcher, :mod:`rockir_jax.cli.launch`
(``rockir-launch``)."""

from rockir_jax.cli.launch import main

if __name__ == "__main__":
    main()
