"""The search page: a local web app over a trained model and its saved index (:func:`create_app`)."""

from rockir_jax.serve.app import create_app

__all__ = ["create_app"]
