"""Batch inference for ``Encoder.encode`` / ``Encoder.precompile``: texts -> numpy [N, D].

Pipeline: texts are taken in chunks of ``chunk_batches * batch_size``; a worker
thread tokenises the next chunk while the current one runs. Within a chunk,
texts are sorted by token length and cut into batches (``buckets.plan_batches``),
each padded to a length bucket and a power-of-two row count, so shapes -- and
compilations -- come from a small fixed set. Batches are dispatched
asynchronously: the host pads batch k+1 while the device runs batch k.

On the CPU backend a batch of ``rows x length`` runs as ``lax.map`` over
micro-batches of about ``MICRO_BATCH_TOKENS`` tokens, so that each layer's
activations and ``[rows, heads, L, L]`` attention scores stay in cache; on the
2-core benchmark CPU this made a 128 x 64 MiniLM batch ~30 % faster than one big
batch (benchmarks/RESULTS.md). An accelerator wants the whole batch at once --
sequential 4-row steps would leave it idle -- so elsewhere the default is off.
Rows are independent, so the results do not depend on it.

Prompts are applied before tokenisation (``prompted``); decoders' Token Prepending needs
its placeholder in every row, which is checked on the host.

``devices=`` (e.g. ``jax.local_devices()``) runs data-parallel: params are
replicated over a one-axis mesh of those devices, every batch's rows are padded
to a multiple of their number and split over them, and each device runs the
same step (micro-batching included) on its rows under ``shard_map``.

Example::

    out = encode(enc, texts, batch_size=64)    # = enc.encode(texts, ...), np.float32 [N, dim]
    out = encode(enc, texts, devices=jax.local_devices())   # same rows, data-parallel
    precompile(enc, texts, batch_size=64)      # later encode(...) compiles nothing
"""

from __future__ import annotations

import concurrent.futures
import functools
from typing import Optional, Sequence

import jax
import numpy as np

from jaxembed.models import buckets, prompts
from jaxembed.models.forward import EmbedSpec, embed_batch
from jaxembed.models.tokenization import check_texts, pad, token_ids, warn_truncated

MICRO_BATCH_TOKENS = 1024


def default_micro_batch_tokens() -> int:
    """``MICRO_BATCH_TOKENS`` on the CPU backend, 0 (no micro-batching) elsewhere."""
    return MICRO_BATCH_TOKENS if jax.default_backend() == "cpu" else 0


def micro_rows(rows: int, length: int, micro_batch_tokens: int) -> int:
    """Rows per micro-batch for a ``rows x length`` batch: the largest power of two
    with ``micro * length <= micro_batch_tokens`` (at least 1) if it divides ``rows``;
    ``rows`` itself (one pass) when that is no split or ``micro_batch_tokens <= 0``."""
    if micro_batch_tokens <= 0:
        return rows
    micro = 1
    while micro * 2 <= rows and micro * 2 * length <= micro_batch_tokens:
        micro *= 2
    return rows if micro >= rows or rows % micro else micro


class EncodeStep:
    """``jit``-ed inference step for one (module, :class:`EmbedSpec`, micro-batch size,
    devices), with a trace counter ``traces`` (how many shapes it compiled). Called as
    ``step(params, batch)`` with ``batch`` as :func:`tokenization.pad` builds it.

    With more than one device the step is ``shard_map``-ped over a mesh of them:
    ``params`` replicated, the row (leading) axis of every ``batch`` entry and of the
    output split (``place_params`` / ``place_rows`` put arrays there; ``row_multiple``,
    the number of devices, must divide the rows)."""

    def __init__(
        self, module, spec: EmbedSpec, micro_batch_tokens: int, devices: Optional[tuple] = None
    ):
        self.traces = 0
        self.micro_batch_tokens = micro_batch_tokens
        self.mesh = None
        self.row_multiple = 1

        def step(params, batch):
            self.traces += 1
            rows, length = batch["input_ids"].shape
            micro = micro_rows(rows, length, micro_batch_tokens)
            if micro == rows:
                return embed_batch(module, spec, params, batch)
            split = lambda a: a.reshape(rows // micro, micro, *a.shape[1:])  # noqa: E731
            out = jax.lax.map(lambda b: embed_batch(module, spec, params, b),
                              jax.tree.map(split, batch))
            return out.reshape(rows, out.shape[-1])

        if devices is not None and len(devices) > 1:
            from jaxembed.train.sharding import batch_sharding, make_mesh, replicated

            self.mesh = make_mesh(data=len(devices), fsdp=1, devices=devices)
            self.row_multiple = len(devices)
            self._params, self._rows = replicated(self.mesh), batch_sharding(self.mesh)
            rows = self._rows.spec  # a prefix of the batch dict: every entry split by rows
            step = jax.shard_map(
                step, mesh=self.mesh, in_specs=(self._params.spec, rows), out_specs=rows
            )
        self.fn = jax.jit(step)

    def place_params(self, params):
        """``params`` replicated over the devices (as they are for one device)."""
        return params if self.mesh is None else jax.device_put(params, self._params)

    def place_rows(self, batch: dict) -> dict:
        """Host ``batch`` (every entry ``[rows, ...]``) split by rows over the devices (as it
        is for one)."""
        return batch if self.mesh is None else jax.device_put(batch, self._rows)

    def __call__(self, params, batch):
        return self.fn(params, batch)


@functools.lru_cache(maxsize=64)
def _cached_step(
    module, spec: EmbedSpec, micro_batch_tokens: int, devices: Optional[tuple]
) -> EncodeStep:
    return EncodeStep(module, spec, micro_batch_tokens, devices)


def encode_step(
    enc, micro_batch_tokens: Optional[int] = None, devices: Optional[Sequence] = None
) -> EncodeStep:
    """The step for ``enc``'s (module, spec) on ``devices`` (``None`` or one device: jax's
    default placement), shared across encoders (modules compare by config), so
    ``replace(params=...)`` or reloading a saved copy reuses the compiled executables.
    ``micro_batch_tokens=None``: :func:`default_micro_batch_tokens`."""
    if micro_batch_tokens is None:
        micro_batch_tokens = default_micro_batch_tokens()
    devices = None if devices is None or len(devices) < 2 else tuple(devices)
    return _cached_step(enc.module, enc.spec, int(micro_batch_tokens), devices)


def padded_rows(rows: int, multiple: int) -> int:
    """``rows`` rounded up to a multiple of ``multiple`` (the number of devices)."""
    return -(-rows // multiple) * multiple


def chosen_prompt(enc, *, prompt: Optional[str], prompt_name: Optional[str] = None
                  ) -> Optional[str]:
    """The prompt ``encode`` puts around every text (``None``/``""``: none): ``prompt``,
    else the named or default prompt (``prompts.resolve``), else Token Prepending's template."""
    chosen = prompts.resolve(enc.prompts, enc.default_prompt_name, prompt=prompt,
                             prompt_name=prompt_name)
    if enc.token_prepending is not None:
        chosen = chosen or enc.token_prepending.prompt
    return chosen


def prompted(enc, texts: list[str], *, prompt: Optional[str], prompt_name: Optional[str]):
    """``(texts with the prompt applied, prompt tokens)`` for ``enc``: the prompt from
    ``prompts.resolve`` (Token Prepending's template when there is none); its token count as
    sentence-transformers counts it (after lower-casing if the model lower-cases)."""
    chosen = chosen_prompt(enc, prompt=prompt, prompt_name=prompt_name)
    tp = enc.token_prepending
    clean = None
    if tp is not None:
        if not chosen or tp.placeholder not in chosen:
            raise ValueError(
                f"token_prepending needs its placeholder {tp.placeholder!r} in the prompt, "
                f"got {chosen!r}; e.g. prompt='This sentence : {tp.placeholder} \"{{text}}\" "
                f"means in one word:\"'"
            )
        if tp.clean_sentences:
            from jaxembed.models.decoder.presets import clean_sentence as clean
    head = prompts.prefix(chosen)
    n_prompt = 0
    if head and enc.tokenizer is not None:
        n_prompt = prompts.token_count(enc.tokenizer, head.lower() if enc.do_lower_case else head)
    return prompts.apply(texts, chosen, clean=clean), n_prompt


def _ids(enc, texts, max_length: int):
    ids, types, n_cut = token_ids(
        enc.tokenizer,
        texts,
        max_length=max_length,
        strip=enc.strip_text,
        lower=enc.do_lower_case,
    )
    if enc.token_prepending is not None:
        missing = [i for i, x in enumerate(ids) if enc.placeholder_id not in x]
        if missing:
            raise ValueError(
                f"texts {missing[:10]} lost the placeholder {enc.token_prepending.placeholder!r} "
                f"(truncated to {max_length} tokens?)"
            )
    return ids, types, n_cut


def _pad(enc, ids, types, idx, rows: int, length: int, n_prompt: int) -> dict:
    return pad(
        [ids[j] for j in idx],
        None if types is None else [types[j] for j in idx],
        rows=rows,
        length=length,
        pad_id=enc.pad_token_id,
        left=enc.padding_side == "left",
        prompt_length=n_prompt,
    )


def _collect(out: np.ndarray, result, idx: np.ndarray, bar) -> None:
    out[idx] = np.asarray(result)[: len(idx)]
    if bar is not None:
        bar.update(len(idx))


def _progress_bar(progress, n: int):
    """``progress``: ``False`` (none), ``True`` (a tqdm bar) or an object with
    ``update(n_rows)`` (e.g. the bulk encoder's sentences/s reporter)."""
    if isinstance(progress, (bool, int)):
        if not progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=n, desc="encode", unit="text")
    return progress


def encode(
    enc,
    texts: Sequence[str],
    *,
    prompt: Optional[str] = None,
    prompt_name: Optional[str] = None,
    batch_size: int = 64,
    max_length: Optional[int] = None,
    progress=False,
    chunk_batches: int = 32,
    micro_batch_tokens: Optional[int] = None,
    devices: Optional[Sequence] = None,
) -> np.ndarray:
    """``Encoder.encode``: ``texts`` (N strings) -> [N, dim] float32 numpy, in input order.

    ``prompt`` (a prefix, or a template with ``{text}``) or ``prompt_name`` (a key of
    ``enc.prompts``) is put around every text; with neither, ``enc.default_prompt_name``'s
    prompt (or Token Prepending's template) is (:mod:`jaxembed.models.prompts`).
    Texts are tokenised once, in a worker thread a chunk of ``chunk_batches *
    batch_size`` ahead; sorted by token length, cut into batches padded to a few
    fixed shapes (one compilation each) and dispatched asynchronously (see the
    module docstring). ``micro_batch_tokens`` splits each batch into ``lax.map``
    steps of about that many tokens (``None``: 1024 on the CPU backend, where it
    keeps activations in cache, and no split on accelerators; ``0``: no split).
    ``devices`` (e.g. ``jax.local_devices()``) splits every batch over those devices
    (data-parallel; ``None``: jax's default device). ``progress``: ``True`` for a tqdm
    bar, or any object with ``update(n_rows)``, called as batches finish.
    Empty strings encode (as [CLS][SEP]); texts longer than ``max_length`` (default
    ``enc.max_length``) tokens are truncated with a ``UserWarning``.
    """
    texts = check_texts(texts)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    max_length = max_length or enc.max_length
    texts, n_prompt = prompted(enc, texts, prompt=prompt, prompt_name=prompt_name)
    n = len(texts)
    out = np.zeros((n, enc.dim), np.float32)
    if n == 0:
        return out
    step = encode_step(enc, micro_batch_tokens, devices)
    params = step.place_params(enc.params)
    span = batch_size * max(1, chunk_batches)
    starts = list(range(0, n, span))
    bar = _progress_bar(progress, n)
    n_truncated, pending = 0, None
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as worker:
        future = worker.submit(_ids, enc, texts[:span], max_length)
        for c, start in enumerate(starts):
            ids, types, t = future.result()
            n_truncated += t
            if c + 1 < len(starts):
                nxt = starts[c + 1]
                future = worker.submit(_ids, enc, texts[nxt : nxt + span], max_length)
            plan = buckets.plan_batches(
                [len(x) for x in ids], batch_size=batch_size, max_length=max_length
            )
            for idx, rows, length in plan:
                batch = _pad(enc, ids, types, idx, padded_rows(rows, step.row_multiple),
                             length, n_prompt)
                result = step(params, step.place_rows(batch))  # dispatched asynchronously
                if pending is not None:
                    _collect(out, *pending, bar)
                pending = (result, start + idx)
        _collect(out, *pending, bar)
    if bar is not None and bar is not progress:
        bar.close()
    warn_truncated(n_truncated, max_length)
    return out


def encode_query(enc, texts: Sequence[str], *, prompt: Optional[str] = None,
                 prompt_name: Optional[str] = None, **kwargs) -> np.ndarray:
    """``Encoder.encode_query``: ``encode`` with the ``"query"`` prompt when neither
    ``prompt`` nor ``prompt_name`` is given (none if the encoder has no such prompt), as
    ``SentenceTransformer.encode_query``."""
    if prompt is None and prompt_name is None:
        prompt = prompts.named(enc.prompts, prompts.QUERY_NAMES)
    return encode(enc, texts, prompt=prompt, prompt_name=prompt_name, **kwargs)


def encode_document(enc, texts: Sequence[str], *, prompt: Optional[str] = None,
                    prompt_name: Optional[str] = None, **kwargs) -> np.ndarray:
    """``Encoder.encode_document``: ``encode`` with the first of the ``"document"``,
    ``"passage"``, ``"corpus"`` prompts when neither ``prompt`` nor ``prompt_name`` is given,
    as ``SentenceTransformer.encode_document``."""
    if prompt is None and prompt_name is None:
        prompt = prompts.named(enc.prompts, prompts.DOCUMENT_NAMES)
    return encode(enc, texts, prompt=prompt, prompt_name=prompt_name, **kwargs)


def precompile(
    enc,
    texts: Optional[Sequence[str]] = None,
    *,
    prompt: Optional[str] = None,
    prompt_name: Optional[str] = None,
    batch_size: int = 64,
    max_length: Optional[int] = None,
    chunk_batches: int = 32,
    micro_batch_tokens: Optional[int] = None,
    devices: Optional[Sequence] = None,
) -> int:
    """``Encoder.precompile``: compile the encode step for every batch shape
    ``encode(texts, batch_size=..., prompt=...)`` will use (for ``texts=None``: every length
    bucket at full ``batch_size`` rows), so later calls run without compiling (with the same
    ``devices``). Returns the number of shapes."""
    max_length = max_length or enc.max_length
    if texts is None:
        shapes = {(batch_size, length) for length in buckets.length_buckets(max_length)}
    else:
        texts, _ = prompted(enc, check_texts(texts), prompt=prompt, prompt_name=prompt_name)
        span, shapes = batch_size * max(1, chunk_batches), set()
        for start in range(0, len(texts), span):
            ids, _, _ = _ids(enc, texts[start : start + span], max_length)
            shapes |= {
                (rows, length)
                for _, rows, length in buckets.plan_batches(
                    [len(x) for x in ids], batch_size=batch_size, max_length=max_length
                )
            }
    step = encode_step(enc, micro_batch_tokens, devices)
    shapes = {(padded_rows(rows, step.row_multiple), length) for rows, length in shapes}
    params = step.place_params(enc.params)
    for rows, length in sorted(shapes):
        batch = pad([[enc.pad_token_id]], None, rows=rows, length=length, pad_id=enc.pad_token_id)
        jax.block_until_ready(step(params, step.place_rows(batch)))
    return len(shapes)
