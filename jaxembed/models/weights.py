"""Hugging Face state dict <-> Flax params for the BERT family.

One table (``param_table``) lists, for a given ``EncoderConfig``, every encoder
weight as a :class:`ParamRow` ``(hf_key, flax_path, hf_shape, flax_shape,
transpose)``; loading and saving both walk it, so the two directions cannot
drift apart, and the shapes a checkpoint must have are read from the same rows.
A torch tensor becomes a Flax array by one rule::

    flax = (hf.T if transpose else hf).reshape(flax_shape)
    hf   = flax.reshape(hf_shape[::-1]).T if transpose else flax.reshape(hf_shape)

which covers every layout: ``nn.Linear.weight`` [out, in] -> ``kernel`` [in, out];
query/key/value [N*D, H] -> [H, N, D] and their biases [N*D] -> [N, D]; the
attention output [H, N*D] -> [N, D, H]; embeddings and LayerNorm vectors as is.
``state_to_params`` / ``params_to_state`` apply any such table, so another
architecture (a decoder) only needs its own table.

Example::

    base, extra = split_base_model(read_state_dict(folder))
    params = hf_to_flax(base, config)
    hf_state = flax_to_hf(params, config)     # inverse, numpy float32

Reference: ``transformers/models/bert/modeling_bert.py`` (parameter names).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import numpy as np

from jaxembed.models.config import EncoderConfig

# Keys an HF checkpoint may carry that are not encoder weights.
BUFFER_KEYS = ("embeddings.position_ids", "embeddings.token_type_ids")
HEAD_PREFIXES = (
    "cls.",
    "lm_head.",
    "classifier.",
    "qa_outputs.",
    "pre_classifier.",
    "discriminator_predictions.",
    "generator_predictions.",
)
BASE_PREFIXES = ("bert.", "roberta.", "model.")


class ParamRow(NamedTuple):
    """One weight: its HF name and torch shape, its Flax path and shape, and whether
    the torch matrix is transposed on the way (``nn.Linear`` stores [out, in])."""

    hf_key: str
    flax_path: tuple[str, ...]
    hf_shape: tuple[int, ...]
    flax_shape: tuple[int, ...]
    transpose: bool = False


def param_table(config: EncoderConfig) -> list[ParamRow]:
    """A :class:`ParamRow` for every encoder weight of ``config``."""
    c = config
    H, N, D, F = c.hidden_size, c.num_attention_heads, c.head_dim, c.intermediate_size
    rows = []

    def linear(hf, path, n_in, n_out):
        weight = ParamRow(f"{hf}.weight", path + ("kernel",), (n_out, n_in), (n_in, n_out), True)
        rows.append(weight)
        rows.append(ParamRow(f"{hf}.bias", path + ("bias",), (n_out,), (n_out,)))

    def norm(hf, path):
        rows.append(ParamRow(f"{hf}.weight", path + ("scale",), (H,), (H,)))
        rows.append(ParamRow(f"{hf}.bias", path + ("bias",), (H,), (H,)))

    for name, n in (
        ("word_embeddings", c.vocab_size),
        ("position_embeddings", c.max_position_embeddings),
        ("token_type_embeddings", c.type_vocab_size),
    ):
        path = ("embeddings", name, "embedding")
        rows.append(ParamRow(f"embeddings.{name}.weight", path, (n, H), (n, H)))
    norm("embeddings.LayerNorm", ("embeddings", "LayerNorm"))
    for i in range(c.num_hidden_layers):
        hf, fx = f"encoder.layer.{i}", (f"layer_{i}",)
        for name in ("query", "key", "value"):
            key, path = f"{hf}.attention.self.{name}", fx + ("attention", name)
            rows.append(ParamRow(f"{key}.weight", path + ("kernel",), (N * D, H), (H, N, D), True))
            rows.append(ParamRow(f"{key}.bias", path + ("bias",), (N * D,), (N, D)))
        key, path = f"{hf}.attention.output.dense", fx + ("attention", "output")
        rows.append(ParamRow(f"{key}.weight", path + ("kernel",), (H, N * D), (N, D, H), True))
        rows.append(ParamRow(f"{key}.bias", path + ("bias",), (H,), (H,)))
        norm(f"{hf}.attention.output.LayerNorm", fx + ("attention_norm",))
        linear(f"{hf}.intermediate.dense", fx + ("intermediate",), H, F)
        linear(f"{hf}.output.dense", fx + ("output",), F, H)
        norm(f"{hf}.output.LayerNorm", fx + ("output_norm",))
    if c.add_pooling_layer:
        linear("pooler.dense", ("pooler", "dense"), H, H)
    return rows


def _rename_legacy(key: str) -> str:
    """Old TF-converted checkpoints name LayerNorm params gamma/beta."""
    if "LayerNorm" in key:
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
            "LayerNorm.beta", "LayerNorm.bias"
        )
    return key


def split_base_model(
    state: dict[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Strip the base-model prefix (``bert.``, ``roberta.``, none) and set aside other keys.

    Returns ``(base, extra)``: ``base`` keys look like ``embeddings.word_embeddings.weight``;
    ``extra`` holds task heads (MLM/NSP/classifier) and buffers such as
    ``embeddings.position_ids``. A key that is neither raises ``ValueError``.
    """
    anchor = "embeddings.word_embeddings.weight"
    prefix = None
    for key in state:
        k = _rename_legacy(key)
        if k.endswith(anchor):
            prefix = k[: -len(anchor)]
            break
    if prefix is None:
        raise ValueError(
            f"checkpoint has no '{anchor}' (keys start with "
            f"{sorted({k.split('.')[0] for k in state})})"
        )
    if prefix and prefix not in BASE_PREFIXES:
        raise ValueError(f"unexpected base-model prefix {prefix!r}; known: {BASE_PREFIXES}")
    base, extra, unknown = {}, {}, []
    for key, value in state.items():
        k = _rename_legacy(key)
        if k.startswith(prefix):
            k = k[len(prefix) :]
            (extra if k in BUFFER_KEYS else base)[k] = value
        elif k.startswith(HEAD_PREFIXES):
            extra[k] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unexpected keys outside the base model {prefix!r}: {sorted(unknown)}")
    return base, extra


def state_to_params(
    base: dict[str, np.ndarray], table: list[ParamRow], *, dtype=np.float32
) -> dict[str, Any]:
    """Map a state dict onto the nested Flax ``params`` dict that ``table`` describes.

    Raises ``ValueError`` naming every missing, unexpected and mis-shaped key.
    """
    expected = {row.hf_key for row in table}
    missing = sorted(expected - set(base))
    unexpected = sorted(set(base) - expected)
    misshaped = [
        f"{row.hf_key}: expected {row.hf_shape}, found {tuple(base[row.hf_key].shape)}"
        for row in table
        if row.hf_key in base and tuple(base[row.hf_key].shape) != row.hf_shape
    ]
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if misshaped:
            parts.append(f"mis-shaped keys [{'; '.join(misshaped)}]")
        raise ValueError("checkpoint does not match the config: " + ", ".join(parts))
    params: dict[str, Any] = {}
    for row in table:
        a = np.asarray(base[row.hf_key], np.float32)  # exact upcast from bf16 / fp16
        node = params
        for p in row.flax_path[:-1]:
            node = node.setdefault(p, {})
        node[row.flax_path[-1]] = np.asarray(
            (a.T if row.transpose else a).reshape(row.flax_shape), dtype=dtype
        )
    return params


def params_to_state(params: dict[str, Any], table: list[ParamRow]) -> dict[str, np.ndarray]:
    """Inverse of ``state_to_params``: Flax params -> state dict (float32, contiguous)."""
    out = {}
    for row in table:
        node = params
        for p in row.flax_path:
            node = node[p]
        a = np.asarray(node, dtype=np.float32)
        if a.shape != row.flax_shape:
            raise ValueError(
                f"param {'/'.join(row.flax_path)} has shape {a.shape}, expected {row.flax_shape}"
            )
        a = a.reshape(row.hf_shape[::-1]).T if row.transpose else a.reshape(row.hf_shape)
        out[row.hf_key] = np.ascontiguousarray(a)
    return out


_LAYER = re.compile(r"encoder\.layer\.(\d+)\.")


def _check_layer_count(base: dict[str, np.ndarray], config: EncoderConfig) -> None:
    """The checkpoint's layers must be exactly ``0 .. num_hidden_layers - 1``; checked
    before the table is built, so the message says which field disagrees."""
    present = sorted({int(m.group(1)) for k in base if (m := _LAYER.match(k))})
    if present != list(range(config.num_hidden_layers)):
        shown = present if len(present) <= 8 else f"{present[:4]} ... {present[-2:]}"
        raise ValueError(
            f"num_hidden_layers is {config.num_hidden_layers} but the checkpoint has "
            f"{len(present)} layer(s): encoder.layer indices {shown}"
        )


def hf_to_flax(
    base: dict[str, np.ndarray], config: EncoderConfig, *, dtype=np.float32
) -> dict[str, Any]:
    """Map a base-model state dict (no prefix) to the Flax ``params`` pytree.

    Raises ``ValueError`` naming a layer-count mismatch, and every missing, unexpected
    and mis-shaped key.
    """
    _check_layer_count(base, config)
    return state_to_params(base, param_table(config), dtype=dtype)


def flax_to_hf(params: dict[str, Any], config: EncoderConfig) -> dict[str, np.ndarray]:
    """Inverse of ``hf_to_flax``: Flax params -> HF base-model state dict (float32, contiguous)."""
    return params_to_state(params, param_table(config))
