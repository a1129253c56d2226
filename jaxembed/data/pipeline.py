"""Deterministic, resumable, per-process batches tokenised ahead of the device.

Global batch ``b`` (0, 1, 2, ...) is a pure function of ``(seed, b)``: its
epoch is ``b // batches_per_epoch`` and its rows are the slice
``[o*B, (o+1)*B)`` (``o = b % batches_per_epoch``) of the epoch's permutation
``default_rng([seed, epoch]).permutation(N)`` (the last partial batch is
dropped, so shapes stay static). Process ``p`` of ``P`` takes rows
``[p*B/P, (p+1)*B/P)`` of each global batch. The data position saved in a
checkpoint is therefore just ``b``, the number of batches consumed: resuming
at ``b`` yields exactly the batch an uninterrupted run would have seen next.

Tokenisation runs in a background thread that keeps at most ``prefetch``
batches in a bounded queue. Every text is padded to exactly ``max_length``
(a single length bucket: with SimCSE's max length 32 nearly every batch
reaches it, and one compiled shape beats re-compiles).

Example::

    loader = BatchLoader(corpus, tokenize, batch_size=64, seed=0)  # tokenize pads to 32
    for step, batch in zip(range(10), loader):
        batch["input_ids"].shape   # (64, n_text_columns, 32)
    loader.position                # 10
    loader.close()
"""

from __future__ import annotations

import queue
import threading
from typing import Callable

import numpy as np

from jaxembed.data.corpus import Corpus

TokenizeFn = Callable[[list[str]], dict]


def epoch_permutation(n: int, *, seed: int, epoch: int) -> np.ndarray:
    """The row order of ``epoch``: a permutation of ``range(n)`` fixed by (seed, epoch)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def batch_rows(n: int, batch: int, *, batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1) -> np.ndarray:
    """Corpus row indices of this process's share of global batch ``batch``."""
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} not divisible by {process_count} processes")
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ValueError(f"corpus of {n} rows is smaller than one batch of {batch_size}")
    epoch, offset = divmod(int(batch), per_epoch)
    rows = epoch_permutation(n, seed=seed, epoch=epoch)[offset * batch_size:(offset + 1) * batch_size]
    local = batch_size // process_count
    return rows[process_index * local:(process_index + 1) * local]


def collate(corpus: Corpus, rows: np.ndarray, tokenize: TokenizeFn) -> dict[str, np.ndarray]:
    """Tokenise text columns to ``[b, C, L]`` int32 arrays; float columns to ``scores [b, K]``."""
    records = [corpus.rows[i] for i in rows]
    c = corpus.num_text_columns
    texts = [r[j] for r in records for j in range(c)]  # row-major: [b, C]
    tok = tokenize(texts)
    out = {k: np.asarray(v, dtype=np.int32).reshape(len(records), c, -1) for k, v in tok.items()}
    if len(corpus.columns) > c:
        out["scores"] = np.asarray([r[c:] for r in records], dtype=np.float32)
    return out


class BatchLoader:
    """Iterator over this process's batches from ``start`` on; ``position`` = batches consumed."""

    def __init__(self, corpus: Corpus, tokenize: TokenizeFn, *, batch_size: int, seed: int,
                 start: int = 0, process_index: int = 0, process_count: int = 1,
                 prefetch: int = 4):
        self.corpus, self.tokenize = corpus, tokenize
        self.batch_size, self.seed = batch_size, seed
        self.process_index, self.process_count = process_index, process_count
        self.batches_per_epoch = len(corpus) // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"corpus of {len(corpus)} rows is smaller than one batch of {batch_size}")
        self.position = int(start)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(self.position,), daemon=True)
        self._thread.start()

    def get(self, batch: int) -> dict[str, np.ndarray]:
        rows = batch_rows(len(self.corpus), batch, batch_size=self.batch_size, seed=self.seed,
                          process_index=self.process_index, process_count=self.process_count)
        return collate(self.corpus, rows, self.tokenize)

    def _produce(self, start: int) -> None:
        b = start
        while not self._stop.is_set():
            try:
                item = (b, self.get(b))
            except Exception as e:  # surfaced in __next__, never lost in the thread
                item = (b, e)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item[1], Exception):
                return
            b += 1

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        b, batch = self._queue.get()
        if isinstance(batch, Exception):
            raise batch
        assert b == self.position, (b, self.position)
        self.position += 1
        return batch

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
