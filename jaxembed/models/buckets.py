"""Fixed shape buckets so a jitted encoder compiles a handful of times, not once per batch.

Sequence lengths are padded up to the next power of two >= ``min_length`` (and
``max_length`` itself as the last bucket); batch rows are padded up to the next
power of two, capped at the batch size. With ``max_length = 256`` and batch 64
that is at most 6 x 7 shapes, whatever the input.

Example::

    length_buckets(256)         # (8, 16, 32, 64, 128, 256)
    bucket_for(37, (8, 16, 32, 64))  # 64
    row_bucket(5, batch_size=64)     # 8
"""

from __future__ import annotations


def length_buckets(max_length: int, *, min_length: int = 8) -> tuple[int, ...]:
    """Powers of two from ``min_length`` below ``max_length``, then ``max_length``."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    out, b = [], min_length
    while b < max_length:
        out.append(b)
        b *= 2
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
