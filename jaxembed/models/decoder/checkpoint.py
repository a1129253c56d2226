"""Read a Hugging Face decoder folder into Flax params, and write one back.

Reading takes ``config.json`` and ``model.safetensors`` or a sharded
``model.safetensors.index.json`` through :func:`jaxembed.models.model_files.read_state_dict`,
the repository's one checkpoint reader: every path stays inside the folder, bfloat16 loads
through ``ml_dtypes`` without torch, and a corrupt file is a ``ValueError`` naming it.
``Encoder.from_pretrained`` reads decoders the same way (``backbone.py``); this module is the
decoder package's own entry point, which also keeps the LM head for a ``*ForCausalLM`` export.

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
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Optional

import numpy as np

from jaxembed.models.decoder.config import DecoderConfig
from jaxembed.models.decoder.families import ARCHITECTURES
from jaxembed.models.decoder.weights import flax_to_hf, hf_to_flax, split_state
from jaxembed.models.model_files import check_links, read_json, read_state_dict, write_safetensors

# config.json keys the family adapters read but ``to_hf_dict`` may not write; dropped from
# the original config on export so a stale one cannot override the new value
_STALE_KEYS = (
    "rope_scaling", "rope_theta", "rope_local_base_freq", "partial_rotary_factor",
    "is_causal", "use_bidirectional_attention", "sliding_window", "layer_types",
    "use_sliding_window", "max_window_layers", "sliding_window_pattern", "torch_dtype",
)


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
    check_links(folder)
    hf_config = read_json(config_path)
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
