r"""The probe set of ``jaxembed merge --method self_positioning``: format, batches and loss.

Format: JSON Lines, one object per line (blank lines skipped)::

    {"task": "sts", "anchor": "A man plays a guitar.", "positive": "Someone plays music."}
    {"task": "retrieval", "anchor": "what is jax", "positive": "JAX is ...", "negative": "..."}

``anchor`` and ``positive`` are required non-empty strings; ``negative`` (a hard
negative) is optional but then required on every line; ``task`` is an optional
string (default ``"default"``) that names the task the pair probes.

Loss (task-balanced InfoNCE): every step draws ``b`` pairs per task without
replacement (``b = min(batch_size, smallest task)``), embeds them with the
merged parameters and averages the tasks' in-batch InfoNCE losses with equal
weight,

.. math::
   L = \frac{1}{T} \sum_{t=1}^{T} \operatorname{InfoNCE}_τ(A_t, P_t[, N_t]),

so a task with many probe pairs does not outweigh one with few (the paper's
"task-balanced" probe). All texts are tokenised once, to one padded length, so
the jitted step compiles once. With every task of the same size ``≤ batch_size``
each step sees the whole probe (a deterministic objective).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Callable, Iterator, Optional

import numpy as np

COLUMNS = ("anchor", "positive", "negative")


@dataclasses.dataclass
class Probe:
    """``texts[t][c]``: the column-``c`` texts (anchor, positive[, negative]) of task ``t``."""

    tasks: tuple[str, ...]
    texts: list[list[list[str]]]

    @property
    def num_columns(self) -> int:
        return len(self.texts[0])

    def sizes(self) -> dict[str, int]:
        return {t: len(cols[0]) for t, cols in zip(self.tasks, self.texts)}


def _field(record: dict, key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    return value


def read_probe(path) -> Probe:
    """Read a probe JSONL file (module docstring); errors name ``file:line``."""
    path = pathlib.Path(path)
    by_task: dict[str, list[list[str]]] = {}
    has_negative = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
            if has_negative is None:
                has_negative = "negative" in record
            if ("negative" in record) != has_negative:
                raise ValueError(f"{where}: 'negative' must be on every line or on none")
            task = record.get("task", "default")
            if not isinstance(task, str):
                raise ValueError(f"{where}: 'task' must be a string, got {task!r}")
            cols = COLUMNS if has_negative else COLUMNS[:2]
            row = [_field(record, c, where) for c in cols]
            columns = by_task.setdefault(task, [[] for _ in cols])
            for column, text in zip(columns, row):
                column.append(text)
    if not by_task:
        raise ValueError(f"{path}: no probe pairs")
    for task, cols in by_task.items():
        if len(cols[0]) < 2:
            raise ValueError(
                f"{path}: task {task!r} has {len(cols[0])} pair; InfoNCE needs >= 2 per task"
            )
    return Probe(tuple(by_task), list(by_task.values()))


def probe_batches(
    probe: Probe,
    tokenize: Callable[[list[str]], dict],
    *,
    batch_size: int,
    seed: int,
) -> Iterator[dict]:
    """Endless batches of int32 arrays ``[T, C, b, L]`` (tasks, columns, rows, tokens),
    ``b`` rows per task drawn without replacement by ``np.random.default_rng(seed)``.
    ``tokenize(texts) -> {"input_ids", "attention_mask", "token_type_ids"}`` [N, L] (and any
    per-row [N] entry, such as ``Encoder.tokenize``'s ``prompt_length``) is called once on every text, before this returns."""
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (in-batch negatives), got {batch_size}")
    flat = [text for cols in probe.texts for col in cols for text in col]
    tokens = tokenize(flat)
    per_task, start = [], 0
    for cols in probe.texts:
        n = len(cols[0])
        size = n * len(cols)
        per_task.append({k: v[start:start + size].reshape(len(cols), n, *v.shape[1:])
                         for k, v in tokens.items()})
        start += size
    b = min(batch_size, min(len(cols[0]) for cols in probe.texts))
    return _sample(per_task, b, np.random.default_rng(seed))


def _sample(per_task: list[dict], b: int, rng: np.random.Generator) -> Iterator[dict]:
    while True:
        rows = [rng.choice(t["input_ids"].shape[1], b, replace=False) for t in per_task]
        yield {k: np.stack([t[k][:, r] for t, r in zip(per_task, rows)]) for k in per_task[0]}


def probe_loss(embed: Callable, *, temperature: float = 0.05) -> Callable:
    """``loss(params, batch)``: the task-balanced InfoNCE of a :func:`probe_batches` batch.

    ``embed(params, batch) -> [B, D]`` is e.g. ``Encoder.embed`` (dropout off)."""
    import jax
    import jax.numpy as jnp

    from jaxembed.losses import info_nce

    def loss(params, batch):
        t, c, b, _ = batch["input_ids"].shape
        # [T, C, b, ...] -> [T*C*b, ...]: token arrays [.., L], a tokenizer's per-row
        # ``prompt_length`` [..]
        flat = {k: jnp.reshape(v, (t * c * b, *v.shape[3:])) for k, v in batch.items()}
        z = embed(params, flat).reshape(t, c, b, -1)

        def task_loss(zt):
            return info_nce(zt[0], zt[1], zt[2] if c == 3 else None, temperature=temperature)

        return jnp.mean(jax.vmap(task_loss)(z))

    return loss


def describe(probe: Probe, batch_size: Optional[int] = None) -> str:
    sizes = ", ".join(f"{t}: {n}" for t, n in probe.sizes().items())
    cols = "anchor/positive/negative" if probe.num_columns == 3 else "anchor/positive"
    return f"probe: {len(probe.tasks)} tasks ({sizes}) of {cols}" + (
        f", {min(batch_size, *probe.sizes().values())} pairs per task per step"
        if batch_size else ""
    )
