r"""Sparsified task-vector merges: TIES (trim, elect sign, disjoint mean), DARE (drop, rescale).

Both act on task vectors (:func:`jaxembed.merge.task_vectors`) tensor by tensor,
in float32 (``compute_dtype``), and are pure: DARE's randomness comes from an
explicit ``key``.

**TIES** (Yadav et al. 2023), for task vectors ``τ₁..τ_N`` and weights ``wᵢ > 0``:

1. *trim*: in every tensor of every ``τᵢ`` keep the ``k = ⌈density · size⌉``
   entries of largest magnitude (all entries ``|x| ≥`` the ``k``-th largest, so
   ties at the threshold are all kept), zero the rest -> ``τ̂ᵢ``;
2. *elect*: ``γ = sign(Σᵢ wᵢ τ̂ᵢ)`` per entry (the sign with the larger total mass);
3. *disjoint mean*: ``τ_m = Σ_{i∈A} wᵢ τ̂ᵢ / Σ_{i∈A} wᵢ`` over the tasks
   ``A = {i : sign(wᵢ τ̂ᵢ) = γ}`` that agree (0 where none does);

and ``θ = θ₀ + scale · τ_m``. With unit weights this is the paper's algorithm;
the weighted form is mergekit's. We trim per tensor (mergekit) rather than over
the whole flattened model (the paper's code): it needs no selection across
tensors and keeps every tensor's sharding. The ``k``-th largest magnitude is
found exactly by :func:`kth_largest` (a bisection, not a sort).

**DARE** (Yu et al. 2024): every entry of every task vector is dropped with
probability ``p = drop_rate`` and the survivors are rescaled by ``1 / (1 - p)``,
so ``E[τ̃] = τ``. The Bernoulli mask of leaf ``j`` of vector ``i`` is
``jax.random.bernoulli(fold_in(fold_in(key, i), j), 1 - p, shape)`` (leaves in
``jax.tree`` order): the same key gives the same masks on any device layout.
Merge the result with :func:`task_arithmetic` (DARE-linear) or :func:`ties_vector`.

Example::

    taus = task_vectors(base, models)
    merged = ties(base, taus, density=0.2)
    merged = task_arithmetic(base, dare(taus, drop_rate=0.9, key=jax.random.key(0)), [1.0, 1.0])

References: Yadav et al. 2023, "TIES-Merging: Resolving Interference When
Merging Models" (arXiv 2306.01708); Yu et al. 2024, "Language Models are Super
Mario: Absorbing Abilities from Homologous Models as a Free Lunch"
(arXiv 2311.03099).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.merge._tree import (
    check_fraction,
    check_vectors,
    check_weights,
    compute_dtype,
)
from jaxembed.merge.arithmetic import task_arithmetic


def kth_largest(values, k: int):
    """The ``k``-th largest entry of a non-negative float array, exactly, without a sort.

    Non-negative floats are ordered like their bit patterns read as integers, so a
    bisection on the bit pattern, one ``count(values >= t)`` per bit, finds the
    largest ``t`` with ``count >= k``: 32 elementwise passes for float32, ~10x faster
    than ``jnp.sort`` on CPU for an embedding matrix, and no all-gather when
    ``values`` is sharded (each count is a global sum). Answers below the smallest
    normal float are returned as 0, since backends that flush subnormals to zero
    (XLA:CPU, TPU) compare them as 0 anyway.
    """
    itype = {4: jnp.int32, 8: jnp.int64}[values.dtype.itemsize]
    as_int = lambda v: jax.lax.bitcast_convert_type(v, itype)  # noqa: E731
    as_float = lambda i: jax.lax.bitcast_convert_type(i, values.dtype)  # noqa: E731
    tiny = jnp.asarray(jnp.finfo(values.dtype).tiny, values.dtype)

    def halve(_, bounds):  # invariant: count(>= lo) >= k > count(>= hi)
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(values >= as_float(mid)) >= k
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    bounds = (as_int(tiny), as_int(jnp.max(values)) + 1)
    lo, _ = jax.lax.fori_loop(0, 8 * values.dtype.itemsize, halve, bounds)
    return jnp.where(jnp.sum(values >= tiny) >= k, as_float(lo), jnp.zeros((), values.dtype))


@functools.partial(jax.jit, static_argnums=1)
def _trim_leaf(x, density: float):
    x = jnp.asarray(x, compute_dtype(jnp.result_type(x)))
    if x.size == 0:
        return x
    k = min(x.size, max(1, math.ceil(density * x.size)))
    magnitude = jnp.abs(x)
    return jnp.where(magnitude >= kth_largest(magnitude, k), x, jnp.zeros_like(x))


def trim(vectors: Sequence, *, density: float) -> list:
    """TIES step 1: keep the top-``density`` fraction of entries by magnitude in every
    tensor of every vector (``density`` in ``(0, 1]``; 1 keeps everything)."""
    density = check_fraction(density, "density", low_open=True, high_open=False)
    check_vectors(vectors)
    return [jax.tree.map(lambda x: _trim_leaf(x, density), v) for v in vectors]


@jax.jit
def _elect_leaf(xs, w):
    dtype = compute_dtype(jnp.result_type(xs[0]))
    wj = jnp.asarray(w, dtype)
    weighted = jnp.stack([wj[i] * jnp.asarray(x, dtype) for i, x in enumerate(xs)])
    elected = jnp.sign(jnp.sum(weighted, axis=0))
    agree = (jnp.sign(weighted) == elected) & (elected != 0)
    mass = jnp.sum(jnp.where(agree, weighted, 0), axis=0)
    w_full = jnp.broadcast_to(wj.reshape((len(xs),) + (1,) * (weighted.ndim - 1)), weighted.shape)
    divisor = jnp.sum(jnp.where(agree, w_full, 0), axis=0)
    return jnp.where(divisor > 0, mass / jnp.where(divisor > 0, divisor, 1), 0)


def elect_and_merge(vectors: Sequence, weights=None):
    """TIES steps 2-3 on (already trimmed) vectors: sign election and disjoint
    weighted mean. ``weights``: ``N`` positive numbers (default all 1). Returns
    one pytree like ``vectors[0]`` in ``compute_dtype``."""
    check_vectors(vectors)
    n = len(vectors)
    w = np.ones(n) if weights is None else check_weights(weights, n)
    if not isinstance(w, jax.core.Tracer) and not np.all(w > 0):
        raise ValueError(f"TIES weights must be > 0, got {weights!r}")
    w = jnp.asarray(w)
    return jax.tree.map(lambda *xs: _elect_leaf(xs, w), *vectors)


def ties_vector(vectors: Sequence, *, density: float, weights=None):
    """The TIES-merged task vector ``τ_m`` (trim, elect, disjoint mean)."""
    return elect_and_merge(trim(vectors, density=density), weights)


def ties(base, vectors: Sequence, *, density: float = 0.2, weights=None, scale: float = 1.0):
    r"""TIES-Merging: ``θ₀ + scale · τ_m`` (see module docstring).

    Args:
      base: parameter pytree ``θ₀``.
      vectors: ``N`` task-vector pytrees.
      density: fraction of entries kept per tensor, in ``(0, 1]`` (paper: 0.2).
      weights: ``N`` positive task weights (default 1 each).
      scale: ``λ`` applied to the merged vector (paper: chosen on validation, 1 default).

    Returns:
      pytree like ``base`` in its dtypes.
    """
    return task_arithmetic(base, [ties_vector(vectors, density=density, weights=weights)],
                           [scale])


def dare(vectors: Sequence, *, drop_rate: float, key: jax.Array) -> list:
    r"""DARE: drop each entry with probability ``drop_rate`` in ``[0, 1)``, rescale the
    rest by ``1 / (1 - drop_rate)``. Returns ``N`` vectors in ``compute_dtype``;
    the masks are derived from ``key`` as in the module docstring."""
    p = check_fraction(drop_rate, "drop_rate", low_open=False, high_open=True)
    check_vectors(vectors)
    out = []
    for i, v in enumerate(vectors):
        leaves, treedef = jax.tree.flatten(v)
        # one small jit per leaf shape: threefry compiles slowly (~0.5 s of CPU per shape;
        # BERT has ~11 distinct shapes), and the key derivation compiles once for all
        keys = [_leaf_key(key, jnp.uint32(i), jnp.uint32(j)) for j in range(len(leaves))]
        dropped = [_drop_leaf(x, k, jnp.float32(p)) for x, k in zip(leaves, keys)]
        out.append(jax.tree.unflatten(treedef, dropped))
    return out


@jax.jit
def _leaf_key(key, i, j):
    return jax.random.fold_in(jax.random.fold_in(key, i), j)


@jax.jit
def _drop_leaf(x, key, p):
    x = jnp.asarray(x, compute_dtype(jnp.result_type(x)))
    keep = jax.random.bernoulli(key, 1 - p, x.shape)
    return jnp.where(keep, x / (1 - p), jnp.zeros_like(x))
