"""Train state and optimiser: AdamW with linear warm-up/decay and global-norm clipping.

``TrainState`` holds everything a resumed run needs on the device side:
``step`` (int32 scalar), ``params`` (encoder + heads), ``opt_state`` (optax)
and ``rng`` (a raw uint32[2] key; the step key is ``fold_in(rng, step)``, so the
key never needs updating and resuming at step ``s`` reproduces step ``s``).

Learning rate (as Hugging Face ``get_linear_schedule_with_warmup``)::

    lr(s) = lr * s / W                      for s < W   (W = round(warmup_ratio * T))
    lr(s) = lr * (T - s) / (T - W)          for s >= W

Update: ``clip_by_global_norm(max_grad_norm)`` then AdamW (decoupled weight
decay as ``torch.optim.AdamW``, applied to matrices only, not to biases or
LayerNorm scales, as HF Trainer's no-decay groups).

Example::

    tx, schedule = make_optimizer(learning_rate=3e-5, total_steps=1000)
    state = TrainState.create(params, tx, seed=0)
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array

    @classmethod
    def create(cls, params, tx: optax.GradientTransformation, *, seed: int) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                   rng=jax.random.PRNGKey(seed))

    def step_key(self) -> jax.Array:
        return jax.random.fold_in(self.rng, self.step)


def linear_schedule(*, learning_rate: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if warmup_steps <= 0:
        return optax.linear_schedule(learning_rate, 0.0, total_steps)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, learning_rate, warmup_steps),
         optax.linear_schedule(learning_rate, 0.0, max(total_steps - warmup_steps, 1))],
        [warmup_steps])


def make_optimizer(*, learning_rate: float, total_steps: int, warmup_ratio: float = 0.0,
                   weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, max_grad_norm: float = 1.0):
    """Returns ``(tx, schedule)``; ``max_grad_norm <= 0`` disables clipping."""
    schedule = linear_schedule(learning_rate=learning_rate, total_steps=total_steps,
                               warmup_steps=int(round(warmup_ratio * total_steps)))
    decay_mask = lambda params: jax.tree.map(lambda p: np.ndim(p) >= 2, params)  # noqa: E731
    parts = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm > 0 else []
    parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                             mask=decay_mask))
    return optax.chain(*parts), schedule


def fingerprint(tree) -> jax.Array:
    """One uint32 per leaf: the wrapping sum of the leaf's bit patterns.

    Exact and order-independent (integer addition), so it is identical for any
    sharding; used to detect a checkpoint that restores without error but with
    different bits (a corrupted file). ``uint32[n_leaves]``.
    """
    def bits(x):
        x = jnp.asarray(x)
        if x.dtype == jnp.bool_:
            x = x.astype(jnp.uint8)
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        width = x.dtype.itemsize * 8
        if width == 64:
            u = jax.lax.bitcast_convert_type(x, jnp.uint32)  # [..., 2]
        else:
            u = jax.lax.bitcast_convert_type(x, {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32}[width])
        return jnp.sum(u.astype(jnp.uint32), dtype=jnp.uint32)

    return jnp.stack([bits(x) for x in jax.tree.leaves(tree)]) if jax.tree.leaves(tree) else jnp.zeros((0,), jnp.uint32)
