"""Read a Hugging Face decoder folder into Flax params, and write one back.

Reading takes ``config.json`` and ``model.safetensors`` or a sharded
``model.safetensors.index.json``. Safetensors files are parsed directly (an 8-byte
little-endian header length, a JSON header of ``dtype``/``shape``/``data_offsets``, raw
little-endian bytes), so bfloat16 checkpoints load through ``ml_dtypes`` without torch;
:func:`read_safetensors` is the one function to swap for a shared reader.

Writing puts ``config.json`` (the original fields, with those the :class:`DecoderConfig`
determines rewritten in transformers-v5 spelling) and a float32 ``model.safetensors``
with the backbone under the original prefix plus the tensors kept aside on load
(``lm_head.weight`` of an untied model), so ``transformers.AutoModel`` /
``AutoModelForCausalLM`` load the folder with the same outputs.

Example::

    ckpt = load_decoder("Qwen3-Embedding-0.6B")
    out = Decoder(ckpt.config).apply({"params": ckpt.params}, ids, mask)
    save_decoder("out/", ckpt.config, ckpt.params, extra=ckpt.extra,
                 hf_config=ckpt.hf_config, prefix=ckpt.prefix)

Reference: https://github.com/huggingface/safetensors (file format).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Optional

import ml_dtypes
import numpy as np

from jaxembed.models.decoder.config import DecoderConfig
from jaxembed.models.decoder.families import ARCHITECTURES
from jaxembed.models.decoder.weights import flax_to_hf, hf_to_flax, split_state

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
# config.json keys the family adapters read but ``to_hf_dict`` may not write; dropped from
# the original config on export so a stale one cannot override the new value
_STALE_KEYS = (
    "rope_scaling", "rope_theta", "rope_local_base_freq", "partial_rotary_factor",
    "is_causal", "use_bidirectional_attention", "sliding_window", "layer_types",
    "use_sliding_window", "max_window_layers", "sliding_window_pattern", "torch_dtype",
)


def read_safetensors(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """All tensors of one ``.safetensors`` file as read-only numpy views of a memory map
    (bf16 as ``ml_dtypes.bfloat16``); copy what you keep."""
    path = pathlib.Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 0 < n <= size - 8:
            raise ValueError(f"{path}: not a safetensors file (header length {n}, size {size})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: unreadable safetensors header ({e})") from e
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if size > 8 + n else b""
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = _DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ValueError(f"{path}: tensor {key!r} has unsupported dtype {info.get('dtype')!r}")
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end - start != int(np.prod(shape)) * np.dtype(dtype).itemsize or end > len(data):
            raise ValueError(f"{path}: tensor {key!r} offsets {start}..{end} do not fit "
                             f"shape {shape} {info['dtype']}")
        out[key] = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)),
                                 offset=start).reshape(shape)
    return out


def read_state_dict(folder: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Every tensor of a folder's ``model.safetensors`` or sharded index."""
    folder = pathlib.Path(folder)
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return read_safetensors(single)
    if not index.is_file():
        raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {folder}")
    with open(index) as f:
        weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index}: no 'weight_map' object")
    state: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        state.update(read_safetensors(folder / shard))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise ValueError(f"{index}: keys listed but not found in their shards: {missing}")
    return state


@dataclasses.dataclass
class DecoderCheckpoint:
    """What :func:`load_decoder` returns: the config, Flax ``params`` (numpy), the tensors
    kept aside for export (``extra``), the original ``config.json`` dict and key prefix."""

    config: DecoderConfig
    params: dict
    extra: dict
    hf_config: dict
    prefix: str


def load_decoder(folder: str | pathlib.Path, *, dtype=np.float32,
                 scan_layers: bool = False) -> DecoderCheckpoint:
    """Load a decoder folder; ``dtype`` is the params' dtype, ``scan_layers`` stacks layers."""
    folder = pathlib.Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no config.json in {folder}")
    with open(config_path) as f:
        try:
            hf_config = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{config_path}: not valid JSON ({e})") from e
    try:
        config = DecoderConfig.from_hf_dict(hf_config)
    except ValueError as e:
        raise ValueError(f"{config_path}: {e}") from e
    base, extra, prefix = split_state(read_state_dict(folder))
    params = hf_to_flax(base, config, dtype=dtype, scan_layers=scan_layers)
    extra = {k: np.array(v) for k, v in extra.items()}
    return DecoderCheckpoint(config, params, extra, hf_config, prefix)


def export_config(config: DecoderConfig, hf_config: Optional[dict] = None, *,
                  causal_lm: bool = True) -> dict[str, Any]:
    """``config.json`` for an export: ``hf_config``'s other fields + ``config``'s own."""
    d = {k: v for k, v in (hf_config or {}).items() if k not in _STALE_KEYS}
    d.update(config.to_hf_dict())
    d["architectures"] = [ARCHITECTURES[config.model_type][int(causal_lm)]]
    d["dtype"] = "float32"
    back = DecoderConfig.from_hf_dict(d)
    if back != config:
        raise ValueError(f"exported config.json reads back differently: {back} != {config}")
    return d


def save_decoder(folder: str | pathlib.Path, config: DecoderConfig, params: dict, *,
                 extra: Optional[dict] = None, hf_config: Optional[dict] = None,
                 prefix: str = "model.") -> None:
    """Write ``config.json`` + float32 ``model.safetensors`` loadable by transformers.

    ``prefix="model."`` writes a ``*ForCausalLM`` layout (its ``lm_head.weight`` comes from
    ``extra``, or is tied to the embeddings), ``""`` a bare ``*Model``."""
    from jaxembed.models.model_files import write_safetensors

    if prefix not in ("", "model."):
        raise ValueError(f"prefix must be '' or 'model.', got {prefix!r}")
    if prefix and not config.tie_word_embeddings and "lm_head.weight" not in (extra or {}):
        raise ValueError("an untied *ForCausalLM folder needs extra['lm_head.weight'] (kept by "
                         "load_decoder); write a bare model with prefix='' instead")
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {prefix + k: v for k, v in flax_to_hf(params, config).items()}
    for key, value in (extra or {}).items():
        if key in state:
            raise ValueError(f"extra tensor {key!r} collides with a backbone weight")
        state[key] = np.ascontiguousarray(np.asarray(value, dtype=np.float32))
    d = export_config(config, hf_config, causal_lm=prefix == "model.")
    with open(folder / "config.json", "w") as f:
        json.dump(d, f, indent=2, sort_keys=True)
    write_safetensors(state, folder / "model.safetensors")
