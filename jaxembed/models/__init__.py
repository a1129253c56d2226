"""Flax BERT-family encoders with Hugging Face weight I/O.

``config`` (EncoderConfig), ``transformer`` (linen modules), ``pooling``,
``heads`` (ProjectionHead, PairScoreHead), ``dropout`` (``nn.Dropout``'s masks
with fused random bits), ``weights`` (HF <-> Flax param tables),
``model_files`` (model-folder files as untrusted input, safetensors I/O),
``backbone`` (architecture families by ``model_type``), ``st_format``
(sentence-transformers folders), ``hub``, ``buckets`` (shape bucketing),
``forward`` (the pure forward pass), ``tokenization``, ``inference`` (the
``encode`` pipeline), ``loading`` (construction and export) and ``encoder``
(the ``Encoder`` API that ties them together).
Heavy imports happen on first attribute access.
"""

_LAZY = {
    "Encoder": ("jaxembed.models.encoder", "Encoder"),
    "EncoderConfig": ("jaxembed.models.config", "EncoderConfig"),
    "TransformerEncoder": ("jaxembed.models.transformer", "TransformerEncoder"),
    "EncoderOutput": ("jaxembed.models.transformer", "EncoderOutput"),
    "pool": ("jaxembed.models.pooling", "pool"),
    "Dropout": ("jaxembed.models.dropout", "Dropout"),
    "ProjectionHead": ("jaxembed.models.heads", "ProjectionHead"),
    "PairScoreHead": ("jaxembed.models.heads", "PairScoreHead"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'jaxembed.models' has no attribute {name!r}")


__all__ = list(_LAZY)
