"""jaxembed: train, distil and align text-embedding models in JAX/Flax.

Folders name what they hold: ``losses`` (pure loss functions, jax only),
``models`` (Flax encoders and Hugging Face weight I/O), ``lora`` (LoRA as a
parameter transform), ``train`` (sharded trainer), ``data`` (input pipelines),
``eval`` (STS protocol) and ``align`` (Procrustes, CSLS, BLI).
"""

__version__ = "0.1.0"


def __getattr__(name):  # lazy: ``import jaxembed`` must not import flax/transformers
    if name == "Encoder":
        from jaxembed.models.encoder import Encoder

        return Encoder
    if name == "losses":
        import importlib

        return importlib.import_module("jaxembed.losses")
    raise AttributeError(f"module 'jaxembed' has no attribute {name!r}")


__all__ = ["Encoder", "losses", "__version__"]
