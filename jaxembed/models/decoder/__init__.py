"""Decoder LLM backbones (Qwen3, Qwen2, Llama, Mistral, Gemma 2, Gemma 3) for embedding.

One generic Flax decoder driven by a :class:`DecoderConfig` of switches:

* ``config``    ``DecoderConfig`` (switches, validation, attention kinds)
* ``families``  HF ``config.json`` <-> ``DecoderConfig`` per ``model_type``
* ``rope``      RoPE variants (default, linear, dynamic, llama3, yarn)
* ``layers``    RMSNorm, projections, gated MLP, embedding
* ``attention`` GQA attention, window/padding masks, soft-capping, implementations
* ``model``     ``Decoder`` (hidden states, early exit, scan, remat, Token Prepending hook)
* ``weights``   the HF <-> Flax name/transform table
* ``checkpoint`` safetensors folder reading (bf16 without torch) and export
* ``pooling``   ``last_token`` / ``mean`` (prompt excluded) under left or right padding
* ``token_prepending`` the Token Prepending overwrite and placeholder lookup

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
    "load_decoder": "checkpoint",
    "save_decoder": "checkpoint",
    "read_state_dict": "checkpoint",
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
