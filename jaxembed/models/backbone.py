"""Architecture families the ``Encoder`` can load, keyed by ``config.json``'s ``model_type``.

A :class:`Backbone` says, for one family, how to read its config, which weights
it has and how they map to Flax (a ``weights.ParamRow`` table), and how to build
its linen module. ``Encoder.from_pretrained`` / ``save_pretrained`` only talk to
this interface, so supporting another family (a decoder such as Qwen or Llama)
means writing those functions and adding its ``model_type``s to ``_BACKBONES``;
nothing in the encoder, tokenisation or inference code changes. The module's
``apply(variables, input_ids, attention_mask, token_type_ids, *, deterministic,
output_hidden_states, rngs)`` must return a ``transformer.EncoderOutput``.

Example::

    backbone = backbone_for("bert")
    config = backbone.read_config(hf_config, base_state)
    params = backbone.load_params(base_state, config, dtype=np.float32)
    module = backbone.make_module(config, dtype=jnp.float32, param_dtype=jnp.float32, remat=False)
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import numpy as np


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
    * ``hf_config(config)`` -> the ``config.json`` fields ``config`` determines.
    """

    name: str
    read_config: Callable[..., Any]
    split_state: Callable[[dict], tuple[dict, dict]]
    load_params: Callable[..., dict]
    export_params: Callable[[Any, Any], dict[str, np.ndarray]]
    make_module: Callable[..., Any]
    hf_config: Callable[[Any], dict]


def _bert_config(hf_config: dict, base: dict, **overrides):
    from jaxembed.models.config import EncoderConfig

    overrides.setdefault("add_pooling_layer", "pooler.dense.weight" in base)
    return EncoderConfig.from_hf_dict(hf_config, **overrides)


def _bert_module(config, *, dtype, param_dtype, remat):
    from jaxembed.models.transformer import TransformerEncoder

    return TransformerEncoder(config, dtype=dtype, param_dtype=param_dtype, remat=remat)


def _bert() -> Backbone:
    from jaxembed.models import weights

    return Backbone(
        name="bert",
        read_config=_bert_config,
        split_state=weights.split_base_model,
        load_params=weights.hf_to_flax,
        export_params=weights.flax_to_hf,
        make_module=_bert_module,
        hf_config=lambda config: config.to_hf_dict(),
    )


# model_type -> (module, factory); factories are imported on first use.
_BACKBONES = {
    "bert": ("jaxembed.models.backbone", "_bert"),
    "roberta": ("jaxembed.models.backbone", "_bert"),
    "xlm-roberta": ("jaxembed.models.backbone", "_bert"),
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
