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

Errors are ``ValueError``s naming the file and the field or weight.
The architecture family comes from ``config.json``'s ``model_type`` through
``backbone.backbone_for``.

Example::

    enc = from_pretrained(Encoder, folder)      # what Encoder.from_pretrained(folder) runs
    save_pretrained(enc, "out/")                # = enc.save_pretrained("out/")
"""

from __future__ import annotations

import json
import pathlib
import warnings
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxembed.models.backbone import backbone_for
from jaxembed.models.hub import resolve
from jaxembed.models.model_files import check_links, read_json, read_state_dict, write_safetensors
from jaxembed.models.st_format import read_st_settings, write_st_files
from jaxembed.models.tokenization import load_tokenizer


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
):
    """``Encoder.from_pretrained``: load a local folder or hub id (HF ``config.json`` +
    safetensors + tokenizer) as a ``cls`` (``Encoder``).

    Explicit arguments win over a sentence-transformers folder's settings, which
    win over the defaults (``mean``, no normalisation, the model's max length).
    ``config_overrides`` changes ``EncoderConfig`` fields (e.g. dropout rates).
    The folder is untrusted input: bad paths, sizes and types are ``ValueError``s
    naming the file and the field (see the module docstring).
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
    base, _ = backbone.split_state(read_state_dict(folder))
    if st is not None and st.pooler is not None:
        base["pooler.dense.weight"], base["pooler.dense.bias"] = st.pooler
    try:
        config = backbone.read_config(hf_config, base, **(config_overrides or {}))
        params = backbone.load_params(base, config, dtype=param_dtype)
    except ValueError as e:
        raise ValueError(f"{config_file}: {e}") from e
    module = backbone.make_module(config, dtype=dtype, param_dtype=param_dtype, remat=remat)
    tokenizer = load_tokenizer(folder)
    try:
        return cls(
            module=module,
            params=jax.tree.map(jnp.asarray, params),
            tokenizer=tokenizer,
            pooling=pooling or (st.pooling if st else "mean"),
            normalize=normalize if normalize is not None else (st.normalize if st else False),
            max_length=max_length or (st.max_length if st else None),
            do_lower_case=st.do_lower_case if st else False,
            strip_text=st is not None,
            hf_config=hf_config,
        )
    except ValueError as e:
        raise ValueError(f"{folder}: {e}") from e


def from_config(
    cls,
    config,
    *,
    key: jax.Array,
    tokenizer=None,
    pooling: str = "mean",
    normalize: bool = False,
    max_length: Optional[int] = None,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    remat: bool = False,
):
    """``Encoder.from_config``: a randomly initialised encoder (normal(0.02) weights,
    as HF) for ``config`` (an ``EncoderConfig``)."""
    backbone = backbone_for(config.model_type)
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
    [, Normalize], sentence_bert_config.json) that ``transformers.AutoModel``,
    ``SentenceTransformer`` and ``Encoder.from_pretrained`` all load, with ``params``
    (default ``enc.params``). ``last4_mean`` has no sentence-transformers equivalent:
    HF files only, with a warning. Returns the folder as a ``pathlib.Path``."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    params = enc.params if params is None else params
    backbone = backbone_for(enc.config.model_type)
    state = backbone.export_params(jax.device_get(params), enc.config)
    hf_config = {**enc._hf_config, **backbone.hf_config(enc.config)}
    with open(directory / "config.json", "w") as f:
        json.dump(hf_config, f, indent=2)
    write_safetensors(state, directory / "model.safetensors")
    if enc.tokenizer is not None:
        enc.tokenizer.save_pretrained(str(directory))
    if enc.pooling == "last4_mean":
        warnings.warn(
            "last4_mean pooling has no sentence-transformers equivalent; "
            "wrote the Hugging Face files only",
            stacklevel=3,
        )
        return directory
    has_pooler = enc.pooling == "cls" and enc.config.add_pooling_layer
    write_st_files(
        directory,
        pooling=enc.pooling,
        normalize=enc.normalize,
        max_length=enc.max_length,
        hidden_size=enc.hidden_size,
        pooler=(state["pooler.dense.weight"], state["pooler.dense.bias"]) if has_pooler else None,
        do_lower_case=enc.do_lower_case,
    )
    return directory
