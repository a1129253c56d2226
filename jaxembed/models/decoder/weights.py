"""Hugging Face decoder state dict <-> Flax params, through one name/transform table.

``param_table(config)`` lists every backbone weight as ``Param(hf_key, flax_path, kind,
hf_shape)``; loading and saving both walk it. HF keys are relative to the base model
(``layers.0.self_attn.q_proj.weight``); the checkpoint's prefix (``model.`` for a
``*ForCausalLM``, none for a bare ``*Model``) is split off by :func:`split_state`.
``kind`` says how a torch tensor becomes a Flax array (``D = head_dim``, ``X`` heads):

* ``copy``        same array (embeddings, norm weights, output/MLP biases)
* ``linear``      ``[out, in] -> [in, out]``
* ``heads_in``    q/k/v ``[X*D, H] -> [H, X, D]``;  ``heads_bias`` ``[X*D] -> [X, D]``
* ``heads_out``   o_proj ``[H, N*D] -> [N, D, H]``

Names: the Flax tree uses the *role* of each norm, so one model serves all families::

    input_layernorm            -> attn_norm
    post_attention_layernorm   -> mlp_norm (Llama/Qwen/Mistral) | attn_post_norm (Gemma)
    pre_feedforward_layernorm  -> mlp_norm        (Gemma)
    post_feedforward_layernorm -> mlp_post_norm   (Gemma)

Norm weights are stored as in the file (Gemma's ``w`` of ``1 + w``). With ``scan_layers``
the per-layer trees ``layer_{i}`` are stacked into ``layers/layer`` with a leading axis.

Example::

    base, extra, prefix = split_state(state)
    params = hf_to_flax(base, config)
    assert flax_to_hf(params, config).keys() == base.keys()

Reference: ``transformers/models/{llama,gemma2}/modeling_*.py`` (parameter names).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from jaxembed.models.decoder.config import DecoderConfig

ANCHOR = "embed_tokens.weight"
BASE_PREFIXES = ("", "model.")
HEAD_PREFIXES = ("lm_head.",)
BUFFER_SUFFIXES = ("rotary_emb.inv_freq",)  # non-persistent buffers some old files carry


class Param(NamedTuple):
    hf_key: str
    flax_path: tuple
    kind: str
    hf_shape: tuple


def param_table(config: DecoderConfig) -> list[Param]:
    """Every backbone weight of ``config`` (unstacked layout ``layer_{i}``)."""
    c = config
    H, F, D = c.hidden_size, c.intermediate_size, c.head_dim
    N, K = c.num_attention_heads, c.num_key_value_heads
    rows = [
        Param(ANCHOR, ("embed_tokens", "embedding"), "copy", (c.vocab_size, H)),
        Param("norm.weight", ("norm", "scale"), "copy", (H,)),
    ]
    for i in range(c.num_hidden_layers):
        hf, fx = f"layers.{i}.", (f"layer_{i}",)

        def add(key, path, kind, shape):
            rows.append(Param(hf + key, fx + path, kind, shape))

        add("input_layernorm.weight", ("attn_norm", "scale"), "copy", (H,))
        if c.sandwich_norms:
            add("post_attention_layernorm.weight", ("attn_post_norm", "scale"), "copy", (H,))
            add("pre_feedforward_layernorm.weight", ("mlp_norm", "scale"), "copy", (H,))
            add("post_feedforward_layernorm.weight", ("mlp_post_norm", "scale"), "copy", (H,))
        else:
            add("post_attention_layernorm.weight", ("mlp_norm", "scale"), "copy", (H,))
        for name, heads in (("q_proj", N), ("k_proj", K), ("v_proj", K)):
            add(f"self_attn.{name}.weight", ("attn", name, "kernel"), "heads_in", (heads * D, H))
            if c.qkv_bias:
                add(f"self_attn.{name}.bias", ("attn", name, "bias"), "heads_bias", (heads * D,))
        add("self_attn.o_proj.weight", ("attn", "o_proj", "kernel"), "heads_out", (H, N * D))
        if c.o_bias:
            add("self_attn.o_proj.bias", ("attn", "o_proj", "bias"), "copy", (H,))
        if c.qk_norm:
            add("self_attn.q_norm.weight", ("attn", "q_norm", "scale"), "copy", (D,))
            add("self_attn.k_norm.weight", ("attn", "k_norm", "scale"), "copy", (D,))
        for name, shape in (("gate_proj", (F, H)), ("up_proj", (F, H)), ("down_proj", (H, F))):
            add(f"mlp.{name}.weight", ("mlp", name, "kernel"), "linear", shape)
            if c.mlp_bias:
                add(f"mlp.{name}.bias", ("mlp", name, "bias"), "copy", shape[:1])
    return rows


def _to_flax(kind: str, a: np.ndarray, head_dim: int) -> np.ndarray:
    if kind == "copy":
        return a
    if kind == "linear":
        return a.T
    if kind == "heads_in":
        return a.T.reshape(a.shape[1], -1, head_dim)
    if kind == "heads_bias":
        return a.reshape(-1, head_dim)
    if kind == "heads_out":
        return a.T.reshape(-1, head_dim, a.shape[0])
    raise ValueError(f"unknown kind {kind!r}")


def _to_hf(kind: str, a: np.ndarray) -> np.ndarray:
    if kind == "copy":
        return a
    if kind == "linear":
        return a.T
    if kind == "heads_in":
        return a.reshape(a.shape[0], -1).T
    if kind == "heads_bias":
        return a.reshape(-1)
    if kind == "heads_out":
        return a.reshape(-1, a.shape[-1]).T
    raise ValueError(f"unknown kind {kind!r}")


def split_state(state: dict[str, np.ndarray]) -> tuple[dict, dict, str]:
    """``(base, extra, prefix)``: backbone tensors without the prefix, tensors kept only for
    export under their full key (``lm_head.weight``, stale RoPE buffers), and the prefix."""
    prefix = next((k[: -len(ANCHOR)] for k in state if k.endswith(ANCHOR)), None)
    if prefix is None:
        raise ValueError(f"checkpoint has no '{ANCHOR}' (keys start with "
                         f"{sorted({k.split('.')[0] for k in state})})")
    if prefix not in BASE_PREFIXES:
        raise ValueError(f"unexpected base-model prefix {prefix!r}; known: {BASE_PREFIXES}")
    base, extra, unknown = {}, {}, []
    for key, value in state.items():
        if key.startswith(HEAD_PREFIXES) or key.endswith(BUFFER_SUFFIXES):
            extra[key] = value
        elif key.startswith(prefix):
            base[key[len(prefix):]] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unexpected keys outside the base model {prefix!r}: {sorted(unknown)}")
    return base, extra, prefix


def check_state(base: dict[str, np.ndarray], config: DecoderConfig) -> None:
    """``ValueError`` naming every missing, unexpected and mis-shaped key."""
    table = param_table(config)
    expected = {p.hf_key: p.hf_shape for p in table}
    missing = sorted(set(expected) - set(base))
    unexpected = sorted(set(base) - set(expected))
    misshaped = [f"{k}: expected {s}, found {tuple(base[k].shape)}"
                 for k, s in expected.items() if k in base and tuple(base[k].shape) != s]
    parts = [f"{name} {items}" for name, items in
             (("missing keys", missing), ("unexpected keys", unexpected),
              ("mis-shaped keys", misshaped)) if items]
    if parts:
        raise ValueError(f"checkpoint does not match the {config.model_type} config: "
                         + "; ".join(parts))


def stack_layers(params: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """``layer_{i}`` subtrees -> one ``layers/layer`` tree with a leading layer axis."""
    out = {k: v for k, v in params.items() if not k.startswith("layer_")}
    layers = [params[f"layer_{i}"] for i in range(num_layers)]
    out["layers"] = {"layer": jax.tree_util.tree_map(lambda *a: np.stack(a), *layers)}
    return out


def unstack_layers(params: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`stack_layers` (no-op on an unstacked tree)."""
    if "layers" not in params:
        return params
    out = {k: v for k, v in params.items() if k != "layers"}
    stacked = params["layers"]["layer"]
    n = jax.tree_util.tree_leaves(stacked)[0].shape[0]
    for i in range(n):
        out[f"layer_{i}"] = jax.tree_util.tree_map(lambda a, i=i: a[i], stacked)
    return out


def hf_to_flax(base: dict[str, np.ndarray], config: DecoderConfig, *, dtype=np.float32,
               scan_layers: bool = False) -> dict[str, Any]:
    """Base-model state dict (no prefix) -> Flax ``params`` (numpy, ``dtype``)."""
    check_state(base, config)
    params: dict[str, Any] = {}
    for p in param_table(config):
        node = params
        for name in p.flax_path[:-1]:
            node = node.setdefault(name, {})
        a = _to_flax(p.kind, np.asarray(base[p.hf_key]), config.head_dim)
        node[p.flax_path[-1]] = np.array(a, dtype=dtype)  # a copy: never a view of a file
    return stack_layers(params, config.num_hidden_layers) if scan_layers else params


def flax_to_hf(params: dict[str, Any], config: DecoderConfig) -> dict[str, np.ndarray]:
    """Inverse of :func:`hf_to_flax` (stacked or not) -> float32 contiguous HF tensors."""
    params = unstack_layers(params)
    out = {}
    for p in param_table(config):
        node = params
        for name in p.flax_path:
            node = node[name]
        a = _to_hf(p.kind, np.asarray(node, dtype=np.float32))
        out[p.hf_key] = np.ascontiguousarray(a)
    return out
