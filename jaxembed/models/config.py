"""``EncoderConfig``: the hyper-parameters of a BERT-family encoder, read from a
Hugging Face ``config.json``.

Supported ``model_type`` values are ``bert`` (BERT and MiniLM-style BERT
checkpoints such as all-MiniLM-L6-v2), ``roberta`` and ``xlm-roberta``.  The two
RoBERTa flavours differ from BERT only in how position ids are built: they
count non-pad tokens and start at ``pad_token_id + 1`` (``position_offset``).

Example::

    cfg = EncoderConfig.from_hf_dict(json.load(open("config.json")))
    cfg.head_dim   # hidden_size // num_attention_heads

Reference: ``transformers/models/{bert,roberta,xlm_roberta}/configuration_*.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta")
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")


# transformers' RobertaConfig / XLMRobertaConfig defaults that differ from BERT's
_TYPE_DEFAULTS = {
    "roberta": {"pad_token_id": 1, "vocab_size": 50265},
    "xlm-roberta": {"pad_token_id": 1},
}


# Upper bounds on the sizes a config may declare. They are far above every released
# encoder (the largest vocabulary, XLM-R's, is 250,002 ids; BERT-large has 24 layers) and
# exist so that an untrusted config.json cannot make the loader allocate without limit
# (``num_hidden_layers: 10**9`` once built a billion-entry weight table).
_INT_FIELDS = {
    "vocab_size": (1, 1 << 22),
    "hidden_size": (1, 1 << 16),
    "num_hidden_layers": (1, 1024),
    "num_attention_heads": (1, 1 << 12),
    "intermediate_size": (1, 1 << 18),
    "max_position_embeddings": (1, 1 << 20),
    "type_vocab_size": (1, 1 << 16),
    "pad_token_id": (0, (1 << 22) - 1),
}
_PROBABILITY_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob")


def check_int(name: str, value: Any, low: int, high: int) -> None:
    """``ValueError`` unless ``value`` is an int (not a bool, not a string) in ``[low, high]``:
    the check every size read from an untrusted ``config.json`` passes before it is used."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


def _check_fields(config) -> None:
    """Types and ranges of every field, before any arithmetic on them: ints are ints
    (not bools, not strings) within ``_INT_FIELDS``' bounds, probabilities are in
    [0, 1], ``layer_norm_eps`` is finite and > 0. Floats given as ints become floats."""
    for name, (low, high) in _INT_FIELDS.items():
        check_int(name, getattr(config, name), low, high)
    for name in (*_PROBABILITY_FIELDS, "layer_norm_eps"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
        value = float(value)
        ok = 0.0 <= value <= 1.0 if name in _PROBABILITY_FIELDS else 0.0 < value < math.inf
        if not ok:
            bounds = "in [0, 1]" if name in _PROBABILITY_FIELDS else "finite and > 0"
            raise ValueError(f"{name} must be {bounds}, got {value}")
        object.__setattr__(config, name, value)
    for name in ("model_type", "hidden_act"):
        value = getattr(config, name)
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r} ({type(value).__name__})")
    if not isinstance(config.add_pooling_layer, bool):
        raise ValueError(f"add_pooling_layer must be a bool, got {config.add_pooling_layer!r}")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Shape and regularisation of the encoder (all fields keyword-only in spirit).

    ``position_offset`` is 0 for BERT (positions ``0..L-1``) and
    ``pad_token_id + 1`` for RoBERTa/XLM-R (positions ``offset..`` over the
    non-pad tokens, pad tokens get ``pad_token_id``). ``add_pooling_layer``
    says whether the dense+tanh pooler over [CLS] exists (set from the
    checkpoint's weights by the loader).
    """

    model_type: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    add_pooling_layer: bool = True

    def __post_init__(self):
        _check_fields(self)
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {self.model_type!r}; supported: {SUPPORTED_MODEL_TYPES}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(
                f"unsupported hidden_act {self.hidden_act!r}; supported: {SUPPORTED_ACTIVATIONS}"
            )
        if not self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"pad_token_id {self.pad_token_id} is not below vocab_size {self.vocab_size}"
            )
        if self.max_tokens < 1:
            raise ValueError(
                f"max_position_embeddings {self.max_position_embeddings} leaves no position for "
                f"a token after the offset {self.position_offset} (pad_token_id + 1)"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def position_offset(self) -> int:
        """First position id of a real token (0 for BERT, ``pad_token_id + 1`` for RoBERTa)."""
        return 0 if self.model_type == "bert" else self.pad_token_id + 1

    @property
    def max_tokens(self) -> int:
        """Longest sequence the position table allows."""
        return self.max_position_embeddings - self.position_offset

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], **overrides) -> "EncoderConfig":
        """Build from a parsed HF ``config.json``; errors on unsupported features and on
        fields of the wrong type or out of range (``ValueError`` naming the field)."""
        if not isinstance(d, dict):
            raise ValueError(f"config must be a JSON object, got {type(d).__name__}")
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {model_type!r} in config.json; supported: "
                f"{SUPPORTED_MODEL_TYPES}"
            )
        pet = d.get("position_embedding_type", "absolute")
        if pet not in (None, "absolute"):
            raise ValueError(f"unsupported position_embedding_type {pet!r} (only 'absolute')")
        for flag in ("is_decoder", "add_cross_attention"):
            if d.get(flag) not in (None, False, True):
                raise ValueError(f"{flag} must be a bool, got {d[flag]!r}")
        if d.get("is_decoder") or d.get("add_cross_attention"):
            raise ValueError("decoder / cross-attention configs are not supported")
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = dict(
            _TYPE_DEFAULTS.get(model_type, {})
        )  # HF class defaults where the file is silent
        kwargs.update({k: v for k, v in d.items() if k in fields and v is not None})
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | pathlib.Path, **overrides) -> "EncoderConfig":
        """``from_hf_dict`` of a ``config.json``; errors name the file."""
        try:
            with open(path) as f:
                d = json.load(f)
            return cls.from_hf_dict(d, **overrides)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF ``config.json`` fields this config determines."""
        d = dataclasses.asdict(self)
        d.pop("add_pooling_layer")
        arch = {"bert": "BertModel", "roberta": "RobertaModel", "xlm-roberta": "XLMRobertaModel"}[
            self.model_type
        ]
        d.update(architectures=[arch], position_embedding_type="absolute")
        return d
