"""Architecture families the ``Encoder`` can load, keyed by ``config.json``'s ``model_type``.

A :class:`Backbone` says, for one family, how to read its config, which weights it has
and how they map to Flax, how to build and run its linen module, which poolings make
sense for it, and how to write its ``config.json`` back. ``Encoder.from_pretrained`` /
``save_pretrained`` / ``apply`` only talk to this interface; a family plugs in by adding
its ``model_type``s to ``_BACKBONES``. Two families exist:

* ``bert`` (``bert``, ``roberta``, ``xlm-roberta``): :class:`TransformerEncoder`, token
  types, dropout, the [CLS] poolings and ``last4_mean``;
* ``decoder`` (``qwen3``, ``qwen2``, ``llama``, ``mistral``, ``gemma2``, ``gemma3_text``):
  :class:`jaxembed.models.decoder.Decoder` run with position ids ``cumsum(mask) - 1`` (so
  an embedding does not depend on the padding side or the padded length), an
  ``output_layer`` and Token Prepending; ``last_token``, ``mean`` and ``max`` pooling. It
  has no dropout (none of these families uses any at inference): ``deterministic`` has
  no effect. An export is the bare ``*Model`` (no LM head), which ``transformers.AutoModel``
  and sentence-transformers load.

Example::

    backbone = backbone_for("qwen3")
    config = backbone.read_config(hf_config, base_state)
    params = backbone.load_params(base_state, config, dtype=np.float32)
    module = backbone.make_module(config, dtype=jnp.float32, param_dtype=jnp.float32, remat=False)
    out = backbone.forward(module, params, ids, mask, None, deterministic=True, rngs=None,
                           output_hidden_states=False, output_layer=None, token_prepending=None)
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import numpy as np

from jaxembed.models.decoder.families import SUPPORTED_DECODER_TYPES


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One architecture family (all functions pure; ``config`` is a frozen dataclass).

    * ``read_config(hf_config, base_state, **overrides)`` -> config, validated; may
      look at the weights (BERT: whether a pooler exists).
    * ``split_state(state)`` -> ``(base, extra)``: the backbone's weights without the
      base-model prefix, and task heads / buffers it ignores.
    * ``load_params(base, config, *, dtype)`` -> Flax params (numpy); ``ValueError``
      naming missing / unexpected / mis-shaped weights.
    * ``export_params(params, config)`` -> HF state dict, float32.
    * ``make_module(config, *, dtype, param_dtype, remat)`` -> linen module.
    * ``forward(module, params, ids, mask, types, *, deterministic, rngs,
      output_hidden_states, output_layer, token_prepending)`` -> the module's output
      (``last_hidden_state`` [B, L, H], ``hidden_states``; BERT also ``pooler_output``).
    * ``hf_config(config, original)`` -> the ``config.json`` to write: ``original`` (the
      loaded file's dict) with the fields ``config`` determines rewritten.
    * ``poolings``: the pooling methods that make sense for the family.
    """

    name: str
    read_config: Callable[..., Any]
    split_state: Callable[[dict], tuple[dict, dict]]
    load_params: Callable[..., dict]
    export_params: Callable[[Any, Any], dict[str, np.ndarray]]
    make_module: Callable[..., Any]
    forward: Callable[..., Any]
    hf_config: Callable[[Any, dict], dict]
    poolings: tuple


# ----------------------------------------------------------------------------- BERT family
def _bert_config(hf_config: dict, base: dict, **overrides):
    from jaxembed.models.config import EncoderConfig

    overrides.setdefault("add_pooling_layer", "pooler.dense.weight" in base)
    return EncoderConfig.from_hf_dict(hf_config, **overrides)


def _bert_module(config, *, dtype, param_dtype, remat):
    from jaxembed.models.transformer import TransformerEncoder

    return TransformerEncoder(config, dtype=dtype, param_dtype=param_dtype, remat=remat)


def _bert_forward(module, params, ids, mask, types, *, deterministic, rngs,
                  output_hidden_states, output_layer, token_prepending):
    if output_layer is not None or token_prepending is not None:
        raise ValueError(f"output_layer and token_prepending are decoder options; "
                         f"{module.config.model_type} does not take them")
    return module.apply({"params": params}, ids, mask, types, deterministic=deterministic,
                        output_hidden_states=output_hidden_states, rngs=rngs)


def _bert() -> Backbone:
    from jaxembed.models import weights

    return Backbone(
        name="bert",
        read_config=_bert_config,
        split_state=weights.split_base_model,
        load_params=weights.hf_to_flax,
        export_params=weights.flax_to_hf,
        make_module=_bert_module,
        forward=_bert_forward,
        hf_config=lambda config, original: {**original, **config.to_hf_dict()},
        poolings=("cls", "cls_before_pooler", "mean", "max", "last4_mean", "last_token"),
    )


# ----------------------------------------------------------------------------- decoders
def _decoder_config(hf_config: dict, base: dict, **overrides):
    from jaxembed.models.decoder.config import DecoderConfig

    return DecoderConfig.from_hf_dict(hf_config, **overrides)


def _decoder_module(config, *, dtype, param_dtype, remat):
    from jaxembed.models.decoder.model import Decoder

    return Decoder(config, dtype=dtype, param_dtype=param_dtype, remat=remat)


def _decoder_forward(module, params, ids, mask, types, *, deterministic, rngs,
                     output_hidden_states, output_layer, token_prepending):
    import jax.numpy as jnp

    from jaxembed.models.decoder.pooling import position_ids_from_mask
    from jaxembed.models.decoder.token_prepending import TokenPrepending

    tp = None
    if token_prepending is not None:
        token_id, start, end = token_prepending
        # the first placeholder of every row (encode checks that each row has one)
        where = jnp.argmax(ids == token_id, axis=1).astype(jnp.int32)
        tp = TokenPrepending(where, start_layer=start, end_layer=end)
    return module.apply({"params": params}, ids, mask, position_ids_from_mask(mask),
                        output_hidden_states=output_hidden_states, output_layer=output_layer,
                        token_prepending=tp)


def _decoder_split(state: dict) -> tuple[dict, dict]:
    from jaxembed.models.decoder.weights import split_state

    base, extra, _ = split_state(state)
    return base, extra


def _decoder_hf_config(config, original: dict) -> dict:
    from jaxembed.models.decoder.checkpoint import export_config

    return export_config(config, original, causal_lm=False)


def _decoder() -> Backbone:
    from jaxembed.models.decoder import weights

    return Backbone(
        name="decoder",
        read_config=_decoder_config,
        split_state=_decoder_split,
        load_params=lambda base, config, *, dtype: weights.hf_to_flax(base, config, dtype=dtype),
        export_params=weights.flax_to_hf,
        make_module=_decoder_module,
        forward=_decoder_forward,
        hf_config=_decoder_hf_config,
        poolings=("last_token", "mean", "max"),
    )


# model_type -> (module, factory); factories are imported on first use.
_BACKBONES = {
    "bert": ("jaxembed.models.backbone", "_bert"),
    "roberta": ("jaxembed.models.backbone", "_bert"),
    "xlm-roberta": ("jaxembed.models.backbone", "_bert"),
    **{t: ("jaxembed.models.backbone", "_decoder") for t in SUPPORTED_DECODER_TYPES},
}


def backbone_for(model_type: Any) -> Backbone:
    """The :class:`Backbone` of a ``config.json`` ``model_type``; ``ValueError`` if unknown."""
    if not isinstance(model_type, str) or model_type not in _BACKBONES:
        raise ValueError(
            f"unsupported model_type {model_type!r} in config.json; supported: "
            f"{tuple(_BACKBONES)}"
        )
    module, factory = _BACKBONES[model_type]
    return getattr(importlib.import_module(module), factory)()
