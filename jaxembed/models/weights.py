"""Hugging Face state dict <-> Flax params, and checkpoint file I/O.

One table (``param_table``) lists, for a given ``EncoderConfig``, every encoder
weight as ``(hf_key, flax_path, kind)``; loading and saving both walk it, so the
two directions cannot drift apart. ``kind`` says how a torch tensor becomes a
Flax array:

* ``copy``      same array (embeddings, LayerNorm vectors, biases of dense layers)
* ``linear``    ``nn.Linear.weight`` [out, in] -> ``kernel`` [in, out] (transpose)
* ``qkv``       [N*D, H] -> [H, N, D];   ``qkv_bias`` [N*D] -> [N, D]
* ``attn_out``  [H, N*D] -> [N, D, H]

Files: ``model.safetensors``, sharded ``model.safetensors.index.json``, or (only
when no safetensors exist) ``pytorch_model.bin`` via ``torch.load(weights_only=True)``.

Example::

    state = read_state_dict(folder)
    base, extra = split_base_model(state)
    params = hf_to_flax(base, config)
    hf_state = flax_to_hf(params, config)     # inverse, numpy float32

Reference: ``transformers/models/bert/modeling_bert.py`` (parameter names).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

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


def param_table(config: EncoderConfig) -> list[tuple[str, tuple[str, ...], str]]:
    """``(hf_key, flax_path, kind)`` for every encoder weight of ``config``."""
    rows = []

    def linear(hf, path, kind="linear", bias_kind="copy"):
        rows.append((f"{hf}.weight", path + ("kernel",), kind))
        rows.append((f"{hf}.bias", path + ("bias",), bias_kind))

    def norm(hf, path):
        rows.append((f"{hf}.weight", path + ("scale",), "copy"))
        rows.append((f"{hf}.bias", path + ("bias",), "copy"))

    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        rows.append((f"embeddings.{name}.weight", ("embeddings", name, "embedding"), "copy"))
    norm("embeddings.LayerNorm", ("embeddings", "LayerNorm"))
    for i in range(config.num_hidden_layers):
        hf, fx = f"encoder.layer.{i}", (f"layer_{i}",)
        for name in ("query", "key", "value"):
            linear(f"{hf}.attention.self.{name}", fx + ("attention", name), "qkv", "qkv_bias")
        linear(f"{hf}.attention.output.dense", fx + ("attention", "output"), "attn_out")
        norm(f"{hf}.attention.output.LayerNorm", fx + ("attention_norm",))
        linear(f"{hf}.intermediate.dense", fx + ("intermediate",))
        linear(f"{hf}.output.dense", fx + ("output",))
        norm(f"{hf}.output.LayerNorm", fx + ("output_norm",))
    if config.add_pooling_layer:
        linear("pooler.dense", ("pooler", "dense"))
    return rows


def hf_shape(key: str, config: EncoderConfig) -> tuple[int, ...]:
    """The torch shape HF uses for ``key`` under ``config``."""
    c = config
    H = c.hidden_size
    if key.startswith("embeddings.word_embeddings"):
        return (c.vocab_size, H)
    if key.startswith("embeddings.position_embeddings"):
        return (c.max_position_embeddings, H)
    if key.startswith("embeddings.token_type_embeddings"):
        return (c.type_vocab_size, H)
    if key.endswith("intermediate.dense.weight"):
        return (c.intermediate_size, H)
    if key.endswith("intermediate.dense.bias"):
        return (c.intermediate_size,)
    if key.endswith("output.dense.weight") and ".attention." not in key:
        return (H, c.intermediate_size)
    return (H, H) if key.endswith("weight") and "LayerNorm" not in key else (H,)


def _to_flax(kind: str, a: np.ndarray, c: EncoderConfig) -> np.ndarray:
    N, D, H = c.num_attention_heads, c.head_dim, c.hidden_size
    if kind == "copy":
        return a
    if kind == "linear":
        return a.T
    if kind == "qkv":
        return a.T.reshape(H, N, D)
    if kind == "qkv_bias":
        return a.reshape(N, D)
    if kind == "attn_out":
        return a.T.reshape(N, D, H)
    raise ValueError(f"unknown kind {kind!r}")


def _to_hf(kind: str, a: np.ndarray, c: EncoderConfig) -> np.ndarray:
    H = c.hidden_size
    if kind == "copy":
        return a
    if kind == "linear":
        return a.T
    if kind == "qkv":
        return a.reshape(H, H).T
    if kind == "qkv_bias":
        return a.reshape(H)
    if kind == "attn_out":
        return a.reshape(H, H).T
    raise ValueError(f"unknown kind {kind!r}")


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


def hf_to_flax(
    base: dict[str, np.ndarray], config: EncoderConfig, *, dtype=np.float32
) -> dict[str, Any]:
    """Map a base-model state dict (no prefix) to the Flax ``params`` pytree.

    Raises ``ValueError`` naming every missing, unexpected and mis-shaped key.
    """
    table = param_table(config)
    expected = {k for k, _, _ in table}
    missing = sorted(expected - set(base))
    unexpected = sorted(set(base) - expected)
    misshaped = [
        f"{k}: expected {hf_shape(k, config)}, found {tuple(base[k].shape)}"
        for k, _, _ in table
        if k in base and tuple(base[k].shape) != hf_shape(k, config)
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
    for key, path, kind in table:
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = np.asarray(
            _to_flax(kind, np.asarray(base[key], np.float32), config), dtype=dtype
        )
    return params


def flax_to_hf(params: dict[str, Any], config: EncoderConfig) -> dict[str, np.ndarray]:
    """Inverse of ``hf_to_flax``: Flax params -> HF base-model state dict (float32, contiguous)."""
    out = {}
    for key, path, kind in param_table(config):
        node = params
        for p in path:
            node = node[p]
        a = np.asarray(node, dtype=np.float32)
        out[key] = np.ascontiguousarray(_to_hf(kind, a, config))
    return out


# ----------------------------------------------------------------------------- file I/O
def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    out = {}
    try:
        with safe_open(str(path), framework="np") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
    except (TypeError, ValueError):  # e.g. bf16, which numpy lacks: go through torch
        import torch  # noqa: F401

        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k).float().numpy()
    return out


def _read_torch_bin(path: pathlib.Path) -> dict[str, np.ndarray]:
    import torch

    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in state.items()}


def read_state_dict(folder: str | pathlib.Path) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint folder, preferring safetensors.

    Order: ``model.safetensors``; ``model.safetensors.index.json`` (sharded);
    ``pytorch_model.bin`` / ``pytorch_model.bin.index.json`` via
    ``torch.load(weights_only=True)`` (never unpickles arbitrary objects).
    """
    folder = pathlib.Path(folder)
    for name, reader in (
        ("model.safetensors", _read_safetensors),
        ("pytorch_model.bin", _read_torch_bin),
    ):
        single = folder / name
        if single.is_file():
            return reader(single)
        index = folder / f"{name}.index.json"
        if index.is_file():
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            state = {}
            for shard in shards:
                state.update(reader(folder / shard))
            return state
    raise FileNotFoundError(f"no model.safetensors(.index.json) or pytorch_model.bin in {folder}")


def write_safetensors(state: dict[str, np.ndarray], path: str | pathlib.Path) -> None:
    """Write a float32 state dict with the ``{"format": "pt"}`` metadata transformers expects."""
    from safetensors.numpy import save_file

    save_file(
        {k: np.ascontiguousarray(v) for k, v in state.items()}, str(path), metadata={"format": "pt"}
    )
