"""Decoder LLM backbones (Qwen3, Qwen2, Llama, Mistral, Gemma 2, Gemma 3) for embedding.

One generic Flax decoder driven by a :class:`DecoderConfig` of switches:

* ``config``    ``DecoderConfig`` (switches, validation, attention kinds)
* ``families``  HF ``config.json`` <-> ``DecoderConfig`` per ``model_type``
* ``rope``      RoPE variants (default, linear, dynamic, llama3, yarn)
* ``layers``    RMSNorm, projections, gated MLP, embedding
* ``attention`` GQA attention, window/padding masks, soft-capping, implementations
* ``model``     ``Decoder`` (hidden states, early exit, scan, remat, Token Prepending hook)
* ``weights``   the HF <-> Flax name/transform table
* ``checkpoint`` folder reading (``model_files``' reader: bf16 without torch) and export
* ``pooling``   ``last_token`` / ``mean`` (prompt excluded) under left or right padding
* ``token_prepending`` the Token Prepending overwrite, placeholder lookup and new row
* ``presets``   Token Prepending settings, the paper's prompts and per-model presets

``Encoder.from_pretrained`` loads these folders too (``jaxembed.models.backbone``), with
tokenisation, prompts and pooling; this package is the model itself.

Example::

    from jaxembed.models.decoder import Decoder, load_decoder, last_token
    ckpt = load_decoder(folder)
    out = Decoder(ckpt.config).apply({"params": ckpt.params}, ids, mask)
    z = last_token(out.last_hidden_state, mask)
"""

_LAZY = {
    "DecoderConfig": "config",
    "RopeConfig": "rope",
    "SUPPORTED_DECODER_TYPES": "families",
    "Decoder": "model",
    "DecoderOutput": "model",
    "TokenPrepending": "token_prepending",
    "placeholder_positions": "token_prepending",
    "add_placeholder_row": "token_prepending",
    "TokenPrependingSettings": "presets",
    "PRESETS": "presets",
    "PROMPTS": "presets",
    "load_decoder": "checkpoint",
    "save_decoder": "checkpoint",
    "DecoderCheckpoint": "checkpoint",
    "hf_to_flax": "weights",
    "flax_to_hf": "weights",
    "last_token": "pooling",
    "last_token_index": "pooling",
    "mean": "pooling",
    "exclude_prompt": "pooling",
    "position_ids_from_mask": "pooling",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"jaxembed.models.decoder.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'jaxembed.models.decoder' has no attribute {name!r}")


__all__ = list(_LAZY)
