"""``DecoderConfig``: the switches that make one generic decoder behave like Qwen2/3,
Llama, Mistral, Gemma 2 or Gemma 3 (family adapters from ``config.json`` are in
``families.py``).

Every layer is pre-norm with a gated MLP::

    h = x + [post_norm](Attention(attn_norm(x)))        # post_norm only if sandwich_norms
    y = h + [post_norm](down(act(gate(m)) * up(m))),  m = mlp_norm(h)

and the switches are

* sizes: ``hidden_size H``, ``intermediate_size F``, ``num_attention_heads N``,
  ``num_key_value_heads K`` (GQA: ``N % K == 0``), ``head_dim D`` (need not be ``H / N``);
* biases: ``qkv_bias`` (Qwen2, ``attention_bias``), ``o_bias``, ``mlp_bias``;
* norms: RMSNorm ``y = x / rms(x) * (norm_offset + w)``; Gemma uses ``norm_offset = 1`` and
  multiplies in float32 before the cast (``norm_scale_in_float32``), Llama casts then
  multiplies; ``qk_norm`` (Qwen3, Gemma 3) normalises each query/key head over ``D``
  before RoPE; ``sandwich_norms`` (Gemma) adds post-attention and post-MLP norms;
* ``scale_embeddings``: embeddings times ``sqrt(H)`` in the activation dtype (Gemma);
* attention: scores scaled by ``query_pre_attn_scalar ** -0.5`` (default ``D ** -0.5``),
  optionally soft-capped ``c * tanh(s / c)`` (``attn_logit_softcapping``, Gemma 2);
* per layer: ``layer_windows[i] = (left, right)``, the largest look-back ``q - k`` and
  look-ahead ``k - q`` (array-index distance, as HF) a query may attend; ``None`` is
  unbounded. Causal full attention is ``(None, 0)``, a causal sliding window ``w`` is
  ``(w - 1, 0)``, bidirectional is ``(None, None)``; and ``layer_ropes[i]`` indexes
  ``ropes`` (Gemma 3 has a local and a global RoPE).

Layers that share ``(window, rope)`` form one *attention kind* (``attention_kinds``); the
model builds one mask and one cos/sin table per kind, so even Gemma's alternating layers
can run under ``nn.scan`` (the per-layer kind is a scanned index).

Example::

    cfg = DecoderConfig.from_hf_dict(json.load(open("config.json")))
    cfg.attention_kinds()      # ((((None, 0), 0),), (0, 0, ...)) for a plain causal Llama

Reference: ``transformers/models/{llama,qwen2,qwen3,mistral,gemma2,gemma3}``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any, Optional

from jaxembed.models.config import SUPPORTED_ACTIVATIONS, check_int
from jaxembed.models.decoder.rope import RopeConfig

Window = tuple  # (left: int | None, right: int | None)

CAUSAL = (None, 0)
BIDIRECTIONAL = (None, None)


# Bounds on the sizes a config.json may declare: far above every released decoder (Gemma 3's
# 262,208-id vocabulary, 126-layer Llama 3.1 405B, 10M-token contexts) and there so that an
# untrusted file cannot make the loader build a billion-entry weight table or layer list.
SIZE_BOUNDS = {
    "vocab_size": (1, 1 << 22),
    "hidden_size": (1, 1 << 16),
    "intermediate_size": (1, 1 << 18),
    "num_hidden_layers": (1, 1024),
    "num_attention_heads": (1, 1 << 12),
    "num_key_value_heads": (1, 1 << 12),
    "head_dim": (1, 1 << 12),
    "max_position_embeddings": (1, 1 << 24),
    "sliding_window": (1, 1 << 24),
}


def _positive_finite(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and 0 < value < math.inf)


def check_size(name: str, value: Any) -> None:
    """``ValueError`` unless ``value`` is an int within ``SIZE_BOUNDS[name]``."""
    check_int(name, value, *SIZE_BOUNDS[name])


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Hyper-parameters and behaviour switches of a decoder-only transformer (hashable).

    Build it from a Hugging Face ``config.json`` with :meth:`from_hf_dict`; write one back
    with :meth:`to_hf_dict`. See the module docstring for the meaning of each switch.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    layer_windows: tuple
    ropes: tuple
    layer_ropes: tuple
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    norm_offset: float = 0.0
    norm_scale_in_float32: bool = False
    sandwich_norms: bool = False
    scale_embeddings: bool = False
    query_pre_attn_scalar: Optional[float] = None
    attn_logit_softcapping: Optional[float] = None

    def __post_init__(self):
        for name in SIZE_BOUNDS:
            if name != "sliding_window":
                check_size(name, getattr(self, name))
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(
                f"unsupported hidden_act {self.hidden_act!r}; supported: {SUPPORTED_ACTIVATIONS}"
            )
        if not _positive_finite(self.rms_norm_eps):
            raise ValueError(f"rms_norm_eps must be a finite number > 0, got {self.rms_norm_eps!r}")
        if self.norm_offset not in (0.0, 1.0):
            raise ValueError(f"norm_offset must be 0 or 1, got {self.norm_offset}")
        for name in ("query_pre_attn_scalar", "attn_logit_softcapping"):
            value = getattr(self, name)
            if value is not None and not _positive_finite(value):
                raise ValueError(f"{name} must be a finite number > 0 or None, got {value!r}")
        L = self.num_hidden_layers
        if len(self.layer_windows) != L or len(self.layer_ropes) != L:
            raise ValueError(
                f"layer_windows ({len(self.layer_windows)}) and layer_ropes "
                f"({len(self.layer_ropes)}) must have num_hidden_layers = {L} entries"
            )
        for i, window in enumerate(self.layer_windows):
            if not (isinstance(window, tuple) and len(window) == 2) or any(
                w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 0)
                for w in window
            ):
                raise ValueError(
                    f"layer_windows[{i}] = {window!r}; expected (left, right) with each an "
                    f"int >= 0 or None"
                )
        if not self.ropes or not all(isinstance(r, RopeConfig) for r in self.ropes):
            raise ValueError("ropes must be a non-empty tuple of RopeConfig")
        bad = [r for r in self.layer_ropes if not (isinstance(r, int) and 0 <= r < len(self.ropes))]
        if bad:
            raise ValueError(
                f"layer_ropes entries {bad} do not index ropes (len {len(self.ropes)})"
            )

    @property
    def max_tokens(self) -> int:
        """Longest sequence ``Encoder`` will feed (``max_position_embeddings``; the name is
        ``EncoderConfig``'s)."""
        return self.max_position_embeddings

    @property
    def num_groups(self) -> int:
        """Query heads per key/value head (``N / K``)."""
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def attention_scale(self) -> float:
        """Score scale: ``query_pre_attn_scalar ** -0.5``, else ``head_dim ** -0.5``."""
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def attention_kinds(self) -> tuple[tuple, tuple]:
        """``(kinds, layer_kind)``: the distinct ``(window, rope_index)`` pairs in first-use
        order, and for every layer the index of its kind."""
        kinds: list = []
        layer_kind = []
        for spec in zip(self.layer_windows, self.layer_ropes):
            if spec not in kinds:
                kinds.append(spec)
            layer_kind.append(kinds.index(spec))
        return tuple(kinds), tuple(layer_kind)

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], **overrides) -> "DecoderConfig":
        """From a parsed HF ``config.json`` (``model_type`` picks the family adapter)."""
        from jaxembed.models.decoder.families import config_from_hf

        cfg = config_from_hf(d)
        return dataclasses.replace(cfg, **overrides) if overrides else cfg

    @classmethod
    def from_file(cls, path: str | pathlib.Path, **overrides) -> "DecoderConfig":
        with open(path) as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from e
        return cls.from_hf_dict(d, **overrides)

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF ``config.json`` fields this config determines (transformers-v5 spelling)."""
        from jaxembed.models.decoder.families import config_to_hf

        return config_to_hf(self)
