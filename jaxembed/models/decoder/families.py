"""Family adapters: a Hugging Face ``config.json`` dict <-> :class:`DecoderConfig`.

Each supported ``model_type`` reads the fields its transformers class reads, with that
class's defaults where the file is silent, and maps them onto the generic switches:

=============== =========================================================================
``llama``       ``attention_bias`` (q/k/v/o), ``mlp_bias``, explicit ``head_dim``
``qwen2``       q/k/v bias, no o bias (``attention_bias`` ignored, as transformers);
                sliding layers from ``use_sliding_window``,
                ``sliding_window``, ``max_window_layers`` or ``layer_types``
``qwen3``       Qwen2's windows, no q/k/v bias unless ``attention_bias``, q/k RMSNorm
``mistral``     ``sliding_window`` on every layer (``null`` = full attention)
``gemma2``      (1 + w) norms in float32, pre+post norms, sqrt(H) embedding scale,
                ``query_pre_attn_scalar``, ``attn_logit_softcapping``, alternating
                sliding/global ``layer_types``
``gemma3_text`` Gemma 2's norms and scale, q/k norm, no soft-capping (transformers ignores
                ``attn_logit_softcapping`` for Gemma 3), 5 local : 1 global layers with a
                local and a global RoPE, ``use_bidirectional_attention``
=============== =========================================================================

Attention masks follow transformers' ``masking_utils`` exactly (array-index distances):

* causal sliding window ``w``: ``0 <= q - k < w``;
* ``is_causal: false`` (any family): full layers bidirectional, sliding layers
  ``|q - k| <= w``;
* Gemma 3 ``use_bidirectional_attention: true``: transformers keeps ``w' = w // 2 + 1`` in
  memory (and writes ``2 (w' - 1)`` back); full layers bidirectional, sliding layers
  ``|q - k| < w'``;
* Gemma 2 ``use_bidirectional_attention: true`` is refused: transformers' eager attention
  stays causal while its flash path turns bidirectional, so the intent is ambiguous (use
  ``is_causal: false``).

RoPE: transformers v5 writes ``rope_parameters`` (``rope_type``, ``rope_theta``, ...; per
layer type for Gemma 3); v4 files have ``rope_scaling`` (``type`` or ``rope_type``) and a
top-level ``rope_theta`` (Gemma 3: ``rope_theta`` global, ``rope_local_base_freq`` local,
``rope_scaling`` on the global RoPE only). Both are read, with v4's ``rope_scaling``
winning when a file has both (as transformers does); v5 is written.

Example::

    cfg = config_from_hf(json.load(open("config.json")))
    d = config_to_hf(cfg)          # raises if cfg cannot be expressed in its family's file

Reference: ``transformers/models/*/configuration_*.py``, ``transformers/masking_utils.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxembed.models.decoder.config import BIDIRECTIONAL, CAUSAL, DecoderConfig, check_size
from jaxembed.models.decoder.rope import RopeConfig

SUPPORTED_DECODER_TYPES = ("qwen3", "qwen2", "llama", "mistral", "gemma2", "gemma3_text")

FULL, SLIDING = "full_attention", "sliding_attention"

# transformers config-class defaults for the fields each family reads
_COMMON = dict(rms_norm_eps=1e-6, num_key_value_heads=None, head_dim=None)
_QWEN = dict(
    _COMMON,
    vocab_size=151936,
    hidden_size=4096,
    intermediate_size=22016,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    hidden_act="silu",
    max_position_embeddings=32768,
    tie_word_embeddings=False,
    use_sliding_window=False,
    sliding_window=4096,
    max_window_layers=28,
    attention_bias=False,
)
_GEMMA = dict(
    _COMMON,
    hidden_size=2304,
    intermediate_size=9216,
    num_hidden_layers=26,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    hidden_activation="gelu_pytorch_tanh",
    tie_word_embeddings=True,
    attention_bias=False,
    query_pre_attn_scalar=256,
    sliding_window=4096,
)
_DEFAULTS = {
    "llama": dict(
        _COMMON,
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        hidden_act="silu",
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
    ),
    "qwen2": _QWEN,
    "qwen3": dict(_QWEN, head_dim=128),
    "mistral": dict(
        _COMMON,
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        hidden_act="silu",
        max_position_embeddings=131072,
        tie_word_embeddings=False,
        sliding_window=4096,
    ),
    "gemma2": dict(
        _GEMMA,
        vocab_size=256000,
        max_position_embeddings=8192,
        attn_logit_softcapping=50.0,
        use_bidirectional_attention=None,
    ),
    "gemma3_text": dict(
        _GEMMA,
        vocab_size=262208,
        max_position_embeddings=131072,
        use_bidirectional_attention=False,
        sliding_window_pattern=6,
    ),
}
_DEFAULT_THETA = 10000.0
_GEMMA3_THETA = {FULL: 1_000_000.0, SLIDING: 10_000.0}

# transformers class names, for ``architectures`` in an exported config.json
ARCHITECTURES = {
    "llama": ("LlamaModel", "LlamaForCausalLM"),
    "qwen2": ("Qwen2Model", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Model", "Qwen3ForCausalLM"),
    "mistral": ("MistralModel", "MistralForCausalLM"),
    "gemma2": ("Gemma2Model", "Gemma2ForCausalLM"),
    "gemma3_text": ("Gemma3TextModel", "Gemma3ForCausalLM"),
}


def _reader(d: dict[str, Any], model_type: str):
    defaults = _DEFAULTS[model_type]

    def get(key):
        return d[key] if key in d else defaults.get(key)

    return get


def _check_int(name: str, value, model_type: str) -> None:
    try:
        check_size(name, value)
    except ValueError as e:
        raise ValueError(f"{model_type}: {e}") from None


# ----------------------------------------------------------------------------- attention
def _layer_types(get, model_type: str, num_layers: int, sliding_window) -> list[str]:
    types = get("layer_types")
    if model_type == "llama":
        types = [FULL] * num_layers  # LlamaModel has no sliding layers
    elif model_type == "mistral":
        # MistralModel ignores layer_types: every layer slides when sliding_window is set
        types = [SLIDING if sliding_window is not None else FULL] * num_layers
    elif types is None and model_type in ("qwen2", "qwen3"):
        first = get("max_window_layers")
        types = [SLIDING if sliding_window is not None and i >= first else FULL
                 for i in range(num_layers)]
    elif types is None and model_type == "gemma2":
        types = [SLIDING if i % 2 == 0 else FULL for i in range(num_layers)]
    elif types is None:  # gemma3_text
        pattern = get("sliding_window_pattern")
        types = [SLIDING if (i + 1) % pattern else FULL for i in range(num_layers)]
    types = list(types)
    if len(types) != num_layers or any(t not in (FULL, SLIDING) for t in types):
        raise ValueError(
            f"{model_type}: layer_types must list {num_layers} of {FULL!r}/{SLIDING!r}, "
            f"got {types}"
        )
    if SLIDING in types and sliding_window is None:
        raise ValueError(f"{model_type}: layer_types has {SLIDING!r} layers but no sliding_window")
    return types


def _windows(get, model_type: str, types: list[str], sliding_window) -> tuple:
    causal = get("is_causal")
    causal = True if causal is None else causal
    if not isinstance(causal, bool):
        raise ValueError(f"{model_type}: is_causal must be true or false, got {causal!r}")
    if model_type == "gemma2" and get("use_bidirectional_attention"):
        raise ValueError(
            "gemma2: use_bidirectional_attention is ambiguous in transformers (its eager "
            "attention stays causal); set is_causal: false for bidirectional attention"
        )
    if sliding_window is not None:
        _check_int("sliding_window", sliding_window, model_type)
    if model_type == "gemma3_text" and get("use_bidirectional_attention"):
        kept = (sliding_window or 0) // 2 + 1  # transformers' in-memory window (exclusive bound)
        sliding = (kept, kept) if not causal else (kept - 1, kept - 1)
        full = BIDIRECTIONAL
    elif causal:
        sliding, full = ((sliding_window - 1, 0) if sliding_window else None), CAUSAL
    else:
        sliding, full = (sliding_window, sliding_window), BIDIRECTIONAL
    return tuple(sliding if t == SLIDING else full for t in types)


# ----------------------------------------------------------------------------- RoPE
def _rope_dict(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a JSON object, got {value!r}")
    return dict(value)


def _ropes(d: dict, model_type: str, types: list[str], max_positions: int) -> tuple[tuple, tuple]:
    scaling = _rope_dict(d.get("rope_scaling"), "rope_scaling")
    params = _rope_dict(d.get("rope_parameters"), "rope_parameters")
    if d.get("partial_rotary_factor") not in (None, 1, 1.0):
        raise ValueError(f"partial_rotary_factor {d['partial_rotary_factor']} is not supported")
    if model_type != "gemma3_text":
        if any(k in params for k in (FULL, SLIDING)):
            raise ValueError(f"{model_type}: rope_parameters must not be per layer type")
        theta = d.get("rope_theta") or _DEFAULT_THETA
        rope = RopeConfig.from_hf(scaling or params, theta=theta,
                                  max_position_embeddings=max_positions)
        return (rope,), (0,) * len(types)
    if params and not any(k in params for k in (FULL, SLIDING)):
        raise ValueError("gemma3_text: rope_parameters must be keyed by layer type")
    # as Gemma3TextConfig: missing entries start as {"rope_type": "default"}, and a v4
    # rope_scaling is merged into the global one (so a legacy "type" key cannot override it)
    per_type = {t: {"rope_type": "default", **_rope_dict(params.get(t), f"rope_parameters[{t!r}]")}
                for t in (FULL, SLIDING)}
    per_type[FULL].update(scaling)
    thetas = {
        FULL: d.get("rope_theta") or _GEMMA3_THETA[FULL],
        SLIDING: d.get("rope_local_base_freq") or _GEMMA3_THETA[SLIDING],
    }
    ropes = []
    for t in (FULL, SLIDING):
        per_type[t].pop("truncate", None)  # transformers reads YaRN's truncate at the top level
        ropes.append(RopeConfig.from_hf(per_type[t], theta=thetas[t],
                                        max_position_embeddings=max_positions))
    return tuple(ropes), tuple(0 if t == FULL else 1 for t in types)


# ----------------------------------------------------------------------------- HF -> config
def config_from_hf(d: dict[str, Any]) -> DecoderConfig:
    """A :class:`DecoderConfig` from a parsed ``config.json``; ``ValueError`` names what is
    unsupported or inconsistent."""
    if not isinstance(d, dict):
        raise ValueError(f"config must be a JSON object, got {type(d).__name__}")
    model_type = d.get("model_type")
    if model_type not in SUPPORTED_DECODER_TYPES:
        raise ValueError(
            f"unsupported decoder model_type {model_type!r}; supported: {SUPPORTED_DECODER_TYPES}"
        )
    get = _reader(d, model_type)
    gemma = model_type.startswith("gemma")
    heads = get("num_attention_heads")
    hidden = get("hidden_size")
    num_layers = get("num_hidden_layers")
    # every size is type- and range-checked before it sizes a list (the layer types, the
    # weight table): the file may be hostile
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "max_position_embeddings"):
        _check_int(name, get(name), model_type)
    for name in ("num_key_value_heads", "head_dim"):
        if get(name) is not None:
            _check_int(name, get(name), model_type)
    head_dim = get("head_dim") or _DEFAULTS[model_type]["head_dim"] or hidden // heads
    sliding_window = get("sliding_window")
    if model_type in ("qwen2", "qwen3") and not get("use_sliding_window"):
        sliding_window = None
    types = _layer_types(get, model_type, num_layers, sliding_window)
    max_positions = get("max_position_embeddings")
    ropes, layer_ropes = _ropes(d, model_type, types, max_positions)
    # Qwen2 hard-codes q/k/v biases and no o bias, Mistral no biases: both ignore the key
    attention_bias = model_type not in ("qwen2", "mistral") and bool(get("attention_bias"))
    return DecoderConfig(
        model_type=model_type,
        vocab_size=get("vocab_size"),
        hidden_size=hidden,
        intermediate_size=get("intermediate_size"),
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=get("num_key_value_heads") or heads,
        head_dim=head_dim,
        max_position_embeddings=max_positions,
        layer_windows=_windows(get, model_type, types, sliding_window),
        ropes=ropes,
        layer_ropes=layer_ropes,
        hidden_act=get("hidden_activation") if gemma else get("hidden_act"),
        rms_norm_eps=get("rms_norm_eps"),
        tie_word_embeddings=bool(get("tie_word_embeddings")),
        qkv_bias=True if model_type == "qwen2" else attention_bias,
        o_bias=attention_bias,
        mlp_bias=bool(get("mlp_bias")) if model_type == "llama" else False,
        qk_norm=model_type in ("qwen3", "gemma3_text"),
        norm_offset=1.0 if gemma else 0.0,
        norm_scale_in_float32=gemma,
        sandwich_norms=gemma,
        scale_embeddings=gemma,
        query_pre_attn_scalar=get("query_pre_attn_scalar") if gemma else None,
        attn_logit_softcapping=get("attn_logit_softcapping") if model_type == "gemma2" else None,
    )



# ----------------------------------------------------------------------------- config -> HF
def _attention_fields(cfg: DecoderConfig) -> dict[str, Any]:
    windows = cfg.layer_windows
    causal = all(right == 0 for _, right in windows)
    types = [FULL if left is None else SLIDING for left, _ in windows]
    sliding = sorted({w for w, t in zip(windows, types) if t == SLIDING}, key=str)
    out: dict[str, Any] = {}
    bidirectional_gemma3 = cfg.model_type == "gemma3_text" and not causal
    if bidirectional_gemma3:
        out["use_bidirectional_attention"] = True
    elif not causal:
        out["is_causal"] = False
    window = None
    if sliding:
        left = sliding[0][0]
        window = 2 * left if bidirectional_gemma3 else (left + 1 if causal else left)
    if cfg.model_type == "mistral":
        out["sliding_window"] = window
    elif cfg.model_type in ("qwen2", "qwen3"):
        out.update(use_sliding_window=window is not None, sliding_window=window, layer_types=types)
    elif cfg.model_type != "llama":  # gemma: a sliding_window must exist even if unused
        out.update(sliding_window=window or 4096, layer_types=types)
    return out


def config_to_hf(cfg: DecoderConfig) -> dict[str, Any]:
    """The family's ``config.json`` fields for ``cfg`` (v5 spelling). Raises ``ValueError``
    when the family cannot express ``cfg`` (checked by reading the result back)."""
    gemma = cfg.model_type.startswith("gemma")
    d: dict[str, Any] = dict(
        model_type=cfg.model_type,
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=cfg.tie_word_embeddings,
    )
    d["hidden_activation" if gemma else "hidden_act"] = cfg.hidden_act
    if cfg.model_type in ("llama", "qwen3") or gemma:
        d["attention_bias"] = cfg.o_bias
    if cfg.model_type == "llama":
        d["mlp_bias"] = cfg.mlp_bias
    if gemma:
        d["query_pre_attn_scalar"] = cfg.query_pre_attn_scalar
    if cfg.model_type == "gemma2":
        d["attn_logit_softcapping"] = cfg.attn_logit_softcapping
    d.update(_attention_fields(cfg))
    if cfg.model_type == "gemma3_text":
        by_type = {}
        for (left, _), r in zip(cfg.layer_windows, cfg.layer_ropes):
            by_type.setdefault(FULL if left is None else SLIDING, cfg.ropes[r])
        d["rope_parameters"] = {
            t: by_type.get(t, RopeConfig(theta=_GEMMA3_THETA[t])).to_hf() for t in (FULL, SLIDING)
        }
    else:
        d["rope_parameters"] = cfg.ropes[0].to_hf()
    back = config_from_hf(d)
    if back != cfg:
        diff = [
            f"{f.name}: {getattr(cfg, f.name)!r} -> {getattr(back, f.name)!r}"
            for f in dataclasses.fields(cfg)
            if getattr(cfg, f.name) != getattr(back, f.name)
        ]
        raise ValueError(f"{cfg.model_type} config.json cannot express this config: {diff}")
    return d
