"""rockir_jax: content-based retrieval of rock micro-CT images with a Double Siamese Network in JAX."""

__version__ = "0.1.0"
