"""Fixed shape buckets so a jitted encoder compiles a handful of times, not once per batch.

Sequence lengths are padded up to the next bucket: multiples of 8 up to 64, then
``per_octave`` (default 4) steps per doubling (64, 80, 96, 112, 128, 160, ...),
and ``max_length`` itself as the last bucket. Batch rows are padded up to the
next power of two, capped at the batch size (only the last batch is short).
With ``max_length = 256``: 16 length buckets, so at most 16 compilations for
full batches, whatever the input; padding waste is at most ~25 %, against ~100 %
for plain powers of two.

``plan_batches`` sorts by *token* length (longest first) before cutting batches,
so every batch is nearly homogeneous in length.

Example::

    length_buckets(256)[:10]          # (8, 16, 24, 32, 40, 48, 56, 64, 80, 96)
    bucket_for(37, length_buckets(256))   # 40
    row_bucket(5, batch_size=64)          # 8
"""

from __future__ import annotations

import numpy as np


def length_buckets(max_length: int, *, min_length: int = 8, per_octave: int = 4) -> tuple[int, ...]:
    """Sorted bucket lengths: steps of ``max(8, 2^k / per_octave)`` in ``(2^k, 2^(k+1)]``,
    capped by (and ending with) ``max_length``."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    out, b = [], min_length
    while b < max_length:
        out.append(b)
        octave = 1 << (b.bit_length() - 1)  # largest power of two <= b
        b += max(8, octave // per_octave)
    out.append(max_length)
    return tuple(out)


def bucket_for(n: int, buckets: tuple[int, ...]) -> int:
    """Smallest bucket >= ``n``; ``ValueError`` if ``n`` exceeds the largest."""
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"length {n} exceeds the largest bucket {buckets[-1]}")


def row_bucket(n: int, *, batch_size: int) -> int:
    """Rows to pad a batch of ``n`` to: next power of two, capped at ``batch_size``."""
    if not 1 <= n <= batch_size:
        raise ValueError(f"batch of {n} rows does not fit batch_size {batch_size}")
    b = 1
    while b < n:
        b *= 2
    return min(b, batch_size)


def plan_batches(lengths, *, batch_size: int, max_length: int) -> list[tuple[np.ndarray, int, int]]:
    """Cut items of token ``lengths`` [N] into padded batches.

    Returns ``[(indices, rows, length), ...]``: ``indices`` into the input (longest
    first, stable), ``rows = row_bucket(len(indices))``, ``length`` the length bucket
    of the batch's longest item.
    """
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    table = length_buckets(max_length)
    plan = []
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        plan.append(
            (
                idx,
                row_bucket(len(idx), batch_size=batch_size),
                bucket_for(int(lengths[idx].max()), table),
            )
        )
    return plan
