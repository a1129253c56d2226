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

from jaxembed.models import buckets
from jaxembed.models.forward import embed_batch
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
    """``jit``-ed inference step for one (module, pooling, normalize, micro-batch size,
    devices), with a trace counter ``traces`` (how many shapes it compiled).

    With more than one device the step is ``shard_map``-ped over a mesh of them:
    ``params`` replicated, the row axis of the inputs and output split
    (``place_params`` / ``place_rows`` put arrays there; ``row_multiple``, the number
    of devices, must divide the rows)."""

    def __init__(
        self,
        module,
        pooling: str,
        normalize: bool,
        micro_batch_tokens: int,
        devices: Optional[tuple] = None,
    ):
        self.traces = 0
        self.micro_batch_tokens = micro_batch_tokens
        self.mesh = None
        self.row_multiple = 1

        def embed_rows(params, input_ids, attention_mask, token_type_ids):
            batch = {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "token_type_ids": token_type_ids,
            }
            return embed_batch(module, pooling, normalize, params, batch)

        def step(params, input_ids, attention_mask, token_type_ids):
            self.traces += 1
            rows, length = input_ids.shape
            micro = micro_rows(rows, length, micro_batch_tokens)
            if micro == rows:
                return embed_rows(params, input_ids, attention_mask, token_type_ids)
            split = lambda a: a.reshape(rows // micro, micro, length)
            out = jax.lax.map(
                lambda b: embed_rows(params, *b),
                (split(input_ids), split(attention_mask), split(token_type_ids)),
            )
            return out.reshape(rows, out.shape[-1])

        if devices is not None and len(devices) > 1:
            from jaxembed.train.sharding import batch_sharding, make_mesh, replicated

            self.mesh = make_mesh(data=len(devices), fsdp=1, devices=devices)
            self.row_multiple = len(devices)
            self._params, self._rows = replicated(self.mesh), batch_sharding(self.mesh)
            rows = self._rows.spec
            step = jax.shard_map(
                step, mesh=self.mesh, in_specs=(self._params.spec, rows, rows, rows),
                out_specs=rows,
            )
        self.fn = jax.jit(step)

    def place_params(self, params):
        """``params`` replicated over the devices (as they are for one device)."""
        return params if self.mesh is None else jax.device_put(params, self._params)

    def place_rows(self, *arrays) -> tuple:
        """Host ``[rows, ...]`` arrays split by rows over the devices (as they are for one)."""
        return arrays if self.mesh is None else tuple(jax.device_put(arrays, self._rows))

    def __call__(self, params, input_ids, attention_mask, token_type_ids):
        return self.fn(params, input_ids, attention_mask, token_type_ids)


@functools.lru_cache(maxsize=64)
def _cached_step(
    module, pooling: str, normalize: bool, micro_batch_tokens: int, devices: Optional[tuple]
) -> EncodeStep:
    return EncodeStep(module, pooling, normalize, micro_batch_tokens, devices)


def encode_step(
    enc, micro_batch_tokens: Optional[int] = None, devices: Optional[Sequence] = None
) -> EncodeStep:
    """The step for ``enc``'s (module, pooling, normalize) on ``devices`` (``None`` or one
    device: jax's default placement), shared across encoders (modules compare by
    config), so ``replace(params=...)`` or reloading a saved copy reuses the compiled
    executables. ``micro_batch_tokens=None``: :func:`default_micro_batch_tokens`."""
    if micro_batch_tokens is None:
        micro_batch_tokens = default_micro_batch_tokens()
    devices = None if devices is None or len(devices) < 2 else tuple(devices)
    return _cached_step(enc.module, enc.pooling, enc.normalize, int(micro_batch_tokens), devices)


def padded_rows(rows: int, multiple: int) -> int:
    """``rows`` rounded up to a multiple of ``multiple`` (the number of devices)."""
    return -(-rows // multiple) * multiple


def _ids(enc, texts, max_length: int):
    return token_ids(
        enc.tokenizer,
        texts,
        max_length=max_length,
        strip=enc.strip_text,
        lower=enc.do_lower_case,
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
    batch_size: int = 64,
    max_length: Optional[int] = None,
    progress=False,
    chunk_batches: int = 32,
    micro_batch_tokens: Optional[int] = None,
    devices: Optional[Sequence] = None,
) -> np.ndarray:
    """``Encoder.encode``: ``texts`` (N strings) -> [N, dim] float32 numpy, in input order.

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
                batch = pad(
                    [ids[j] for j in idx],
                    None if types is None else [types[j] for j in idx],
                    rows=padded_rows(rows, step.row_multiple),
                    length=length,
                    pad_id=enc.pad_token_id,
                )
                arrays = step.place_rows(
                    batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
                )
                result = step(params, *arrays)  # dispatched asynchronously
                if pending is not None:
                    _collect(out, *pending, bar)
                pending = (result, start + idx)
        _collect(out, *pending, bar)
    if bar is not None and bar is not progress:
        bar.close()
    warn_truncated(n_truncated, max_length)
    return out


def precompile(
    enc,
    texts: Optional[Sequence[str]] = None,
    *,
    batch_size: int = 64,
    max_length: Optional[int] = None,
    chunk_batches: int = 32,
    micro_batch_tokens: Optional[int] = None,
    devices: Optional[Sequence] = None,
) -> int:
    """``Encoder.precompile``: compile the encode step for every batch shape
    ``encode(texts, batch_size=...)`` will use (for ``texts=None``: every length bucket
    at full ``batch_size`` rows), so later calls run without compiling (with the same
    ``devices``). Returns the number of shapes."""
    max_length = max_length or enc.max_length
    if texts is None:
        shapes = {(batch_size, length) for length in buckets.length_buckets(max_length)}
    else:
        texts = check_texts(texts)
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
    for rows, length in sorted(shapes):
        ids = np.full((rows, length), enc.pad_token_id, np.int32)
        mask = np.zeros((rows, length), np.int32)
        mask[:, 0] = 1
        arrays = step.place_rows(ids, mask, np.zeros_like(ids))
        jax.block_until_ready(step(step.place_params(enc.params), *arrays))
    return len(shapes)
