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
import pathlib
from typing import Any

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta")
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")


# transformers' RobertaConfig / XLMRobertaConfig defaults that differ from BERT's
_TYPE_DEFAULTS = {
    "roberta": {"pad_token_id": 1, "vocab_size": 50265},
    "xlm-roberta": {"pad_token_id": 1},
}


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
        """Build from a parsed HF ``config.json``; errors on unsupported features."""
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {model_type!r} in config.json; supported: "
                f"{SUPPORTED_MODEL_TYPES}"
            )
        pet = d.get("position_embedding_type", "absolute")
        if pet not in (None, "absolute"):
            raise ValueError(f"unsupported position_embedding_type {pet!r} (only 'absolute')")
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
        with open(path) as f:
            return cls.from_hf_dict(json.load(f), **overrides)

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF ``config.json`` fields this config determines."""
        d = dataclasses.asdict(self)
        d.pop("add_pooling_layer")
        arch = {"bert": "BertModel", "roberta": "RobertaModel", "xlm-roberta": "XLMRobertaModel"}[
            self.model_type
        ]
        d.update(architectures=[arch], position_embedding_type="absolute")
        return d
