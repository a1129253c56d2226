"""Building an ``Encoder`` from a model folder or a config, and writing one back.

``from_pretrained`` treats the folder as untrusted input:

1. every file it opens, and every path the folder's JSON names (shards,
   sentence-transformers modules), must resolve inside the folder
   (``model_files.safe_join``; symlinks included);
2. the tensors are read; their sizes are bounded by the files' sizes;
3. ``config.json``'s fields are type- and range-checked (``EncoderConfig``)
   and the declared layer count and every weight shape are checked against
   the tensors, before anything is allocated from a declared size;
4. the tokenizer's largest id must be below ``vocab_size``.

Token Prepending adds its placeholder to the tokenizer when absent, with a seeded
``N(0, 1)`` embedding row (``decoder/presets.py``); an export keeps both.

Errors are ``ValueError``s naming the file and the field or weight.
The architecture family comes from ``config.json``'s ``model_type`` through
``backbone.backbone_for``.

Example::

    enc = from_pretrained(Encoder, folder)      # what Encoder.from_pretrained(folder) runs
    save_pretrained(enc, "out/")                # = enc.save_pretrained("out/")
"""

from __future__ import annotations

import copy
import json
import pathlib
import warnings
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxembed.models.backbone import backbone_for
from jaxembed.models.decoder import presets
from jaxembed.models.decoder.token_prepending import add_placeholder_row
from jaxembed.models.hub import resolve
from jaxembed.models.model_files import check_links, read_json, read_state_dict, write_safetensors
from jaxembed.models.prompts import TEXT
from jaxembed.models.st_format import read_st_settings, write_st_files
from jaxembed.models.tokenization import ensure_token, load_tokenizer


def from_pretrained(
    cls,
    path_or_id,
    *,
    pooling: Optional[str] = None,
    normalize: Optional[bool] = None,
    max_length: Optional[int] = None,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    remat: bool = False,
    config_overrides: Optional[dict] = None,
    padding_side: Optional[str] = None,
    prompts: Optional[dict] = None,
    default_prompt_name: Optional[str] = None,
    include_prompt: Optional[bool] = None,
    output_layer: Optional[int] = None,
    token_prepending=None,
):
    """``Encoder.from_pretrained``: load a local folder or hub id (HF ``config.json`` +
    safetensors, single or sharded, + tokenizer) as a ``cls`` (``Encoder``); an encoder
    (BERT, RoBERTa, XLM-R) or a decoder (Qwen3, Qwen2, Llama, Mistral, Gemma 2/3) by
    ``config.json``'s ``model_type``.

    Explicit arguments win over a sentence-transformers folder's settings, which win over
    the defaults (``mean`` for encoders, ``last_token`` for decoders; no normalisation;
    the model's max length; the tokenizer's padding side). ``prompts`` are merged over the
    folder's (``config_sentence_transformers.json``). ``config_overrides`` changes config
    fields (e.g. dropout rates). Decoders only: ``output_layer`` (``hidden_states[k]``,
    default the last) and ``token_prepending`` (a preset name of
    :mod:`jaxembed.models.decoder.presets`, a dict of ``TokenPrependingSettings`` fields,
    or the dataclass; its ``output_layer`` applies unless one is given here). The folder is
    untrusted input: bad paths, sizes and types are ``ValueError``s naming the file and the
    field (see the module docstring).
    """
    folder = resolve(path_or_id)
    check_links(folder)
    config_file = folder / "config.json"
    hf_config = read_json(config_file)
    try:
        backbone = backbone_for(hf_config.get("model_type"))
    except ValueError as e:
        raise ValueError(f"{config_file}: {e}") from e
    st = read_st_settings(folder)
    if st is not None and st.pooling not in backbone.poolings:
        raise ValueError(f"{folder}: sentence-transformers pooling {st.pooling!r} is not "
                         f"supported for {hf_config['model_type']}; supported: {backbone.poolings}")
    base, _ = backbone.split_state(read_state_dict(folder))
    if st is not None and st.pooler is not None:
        base["pooler.dense.weight"], base["pooler.dense.bias"] = st.pooler
    try:
        config = backbone.read_config(hf_config, base, **(config_overrides or {}))
        params = backbone.load_params(base, config, dtype=param_dtype)
    except ValueError as e:
        raise ValueError(f"{config_file}: {e}") from e
    tokenizer = load_tokenizer(folder)
    tp = presets.resolve(token_prepending)
    placeholder_id = None
    if tp is not None:
        if backbone.name != "decoder":
            raise ValueError(f"{folder}: token_prepending needs a decoder, not "
                             f"{config.model_type}")
        if tokenizer is None:
            raise ValueError(f"{folder}: token_prepending needs the folder's tokenizer")
        placeholder_id, added = ensure_token(tokenizer, tp.placeholder)
        if added:
            params, config = add_placeholder_row(params, config, placeholder_id, seed=tp.seed)
        if output_layer is None:
            output_layer = tp.output_layer
    module = backbone.make_module(config, dtype=dtype, param_dtype=param_dtype, remat=remat)
    default_pooling = "last_token" if backbone.name == "decoder" else "mean"
    try:
        return cls(
            module=module,
            params=jax.tree.map(jnp.asarray, params),
            tokenizer=tokenizer,
            pooling=pooling or (st.pooling if st else default_pooling),
            normalize=normalize if normalize is not None else (st.normalize if st else False),
            max_length=max_length or (st.max_length if st else None),
            do_lower_case=st.do_lower_case if st else False,
            strip_text=st is not None,
            hf_config=hf_config,
            padding_side=padding_side,
            prompts={**(st.prompts if st else {}), **(prompts or {})},
            default_prompt_name=default_prompt_name or (st.default_prompt_name if st else None),
            include_prompt=include_prompt if include_prompt is not None
            else (st.include_prompt if st else True),
            output_layer=output_layer,
            token_prepending=tp,
            placeholder_id=placeholder_id,
        )
    except ValueError as e:
        raise ValueError(f"{folder}: {e}") from e


def from_config(
    cls,
    config,
    *,
    key: jax.Array,
    tokenizer=None,
    pooling: Optional[str] = None,
    normalize: bool = False,
    max_length: Optional[int] = None,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    remat: bool = False,
):
    """``Encoder.from_config``: a randomly initialised encoder (normal(0.02) weights,
    as HF) for ``config`` (an ``EncoderConfig`` or a ``DecoderConfig``); ``pooling``
    defaults to ``mean`` for encoders and ``last_token`` for decoders."""
    backbone = backbone_for(config.model_type)
    pooling = pooling or ("last_token" if backbone.name == "decoder" else "mean")
    module = backbone.make_module(config, dtype=dtype, param_dtype=param_dtype, remat=remat)
    ids = jnp.ones((1, 8), jnp.int32)
    params = nn.meta.unbox(module.init(key, ids, ids)["params"])
    return cls(
        module=module,
        params=params,
        tokenizer=tokenizer,
        pooling=pooling,
        normalize=normalize,
        max_length=max_length,
    )


def save_pretrained(enc, directory, *, params=None) -> pathlib.Path:
    """``Encoder.save_pretrained``: write an HF + sentence-transformers folder
    (config.json, model.safetensors, tokenizer files, modules.json, 1_Pooling[, 2_Dense]
    [, Normalize], sentence_bert_config.json, config_sentence_transformers.json with the
    prompts) that ``transformers.AutoModel``, ``SentenceTransformer`` and
    ``Encoder.from_pretrained`` all load, with ``params`` (default ``enc.params``).
    Decoders are written as the bare ``*Model`` (no LM head); the tokenizer keeps the
    encoder's padding side and any Token Prepending placeholder. ``last4_mean``, an
    ``output_layer`` and Token Prepending have no sentence-transformers equivalent: HF files
    only, with a warning; so do template prompts (``{text}``), which are left out of
    ``config_sentence_transformers.json`` with a warning. Returns the folder as a
    ``pathlib.Path``."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    params = enc.params if params is None else params
    backbone = backbone_for(enc.config.model_type)
    state = backbone.export_params(jax.device_get(params), enc.config)
    with open(directory / "config.json", "w") as f:
        json.dump(backbone.hf_config(enc.config, enc._hf_config), f, indent=2)
    write_safetensors(state, directory / "model.safetensors")
    if enc.tokenizer is not None:
        tokenizer = copy.deepcopy(enc.tokenizer)
        tokenizer.padding_side = enc.padding_side
        tokenizer.save_pretrained(str(directory))
    inexpressible = [
        what for what, present in (
            ("last4_mean pooling", enc.pooling == "last4_mean"),
            (f"output_layer={enc.output_layer}", enc.output_layer is not None),
            ("token_prepending", enc.token_prepending is not None),
        ) if present
    ]
    if inexpressible:
        warnings.warn(
            f"{', '.join(inexpressible)} has no sentence-transformers equivalent; "
            "wrote the Hugging Face files only",
            stacklevel=3,
        )
        return directory
    templates = sorted(name for name, text in enc.prompts.items() if TEXT in text)
    if templates:
        warnings.warn(f"prompts {templates} are templates ({TEXT}), which sentence-transformers "
                      "reads as prefixes; left out of config_sentence_transformers.json",
                      stacklevel=3)
    has_pooler = enc.pooling == "cls" and enc.config.add_pooling_layer
    default = enc.default_prompt_name if enc.default_prompt_name not in templates else None
    write_st_files(
        directory,
        pooling=enc.pooling,
        normalize=enc.normalize,
        max_length=enc.max_length,
        hidden_size=enc.hidden_size,
        pooler=(state["pooler.dense.weight"], state["pooler.dense.bias"]) if has_pooler else None,
        do_lower_case=enc.do_lower_case,
        include_prompt=enc.include_prompt,
        prompts={k: v for k, v in enc.prompts.items() if k not in templates},
        default_prompt_name=default,
    )
    return directory
