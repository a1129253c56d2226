r"""Task vectors, task arithmetic and weighted averages (model soups) of parameter pytrees.

All functions are pure ``jax.numpy`` over pytrees: they ``jit``, differentiate
with respect to the weights, and keep the input shardings (every operation is
elementwise). Each runs one small jitted kernel per leaf, so a model compiles
once per distinct leaf shape (about 11 for BERT), not one program per model. Precision: each leaf is computed in float32 (float64 leaves in
float64 when ``jax_enable_x64`` is on), whatever its storage dtype, and the
merged leaf is cast back to the base's dtype. Task vectors are *kept* in that
compute dtype, so the difference of two bfloat16 checkpoints loses nothing.
Each float32 result element is within ``(2N + 2) · 2⁻²⁴ · (|θ₀| + Σᵢ |wᵢ| |τᵢ|)``
of the exact float64 value (tested), i.e. a few ulps: we chose float32 on device
over float64 on the host because Self Positioning differentiates this very
function on the accelerator, and one code path is what we test.

Example::

    taus = task_vectors(base, [sts_model, retrieval_model])
    merged = task_arithmetic(base, taus, [0.6, 0.5])   # θ₀ + 0.6 τ₁ + 0.5 τ₂
    soup = linear([model_a, model_b, model_c])          # uniform average

References: Ilharco et al. 2023, "Editing Models with Task Arithmetic"
(arXiv 2212.04089); Wortsman et al. 2022, "Model soups" (arXiv 2203.05482).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.merge._tree import check_trees, check_weights, compute_dtype, leaves_with_paths


def task_vectors(base, models: Sequence) -> list:
    r"""``τᵢ = θᵢ − θ₀`` for every model.

    Args:
      base: parameter pytree ``θ₀``.
      models: list of ``N`` pytrees with ``base``'s structure, leaf shapes and dtypes.

    Returns:
      list of ``N`` pytrees like ``base``; leaves in ``compute_dtype`` (float32 for
      bfloat16/float16/float32 parameters).

    Raises:
      ValueError: naming the first leaf whose path, shape or dtype differs.
    """
    check_trees(base, "base", models, "models", same_dtype=True)
    return [jax.tree.map(_difference, m, base) for m in models]


@jax.jit
def _difference(x, b):
    dtype = compute_dtype(b.dtype)
    return x.astype(dtype) - b.astype(dtype)


@jax.jit
def _combine(b, taus, w):
    """``b + Σᵢ w[i] taus[i]`` in ``compute_dtype``, summed in order, cast to ``b``'s dtype."""
    dtype = compute_dtype(jnp.result_type(b))
    w = jnp.asarray(w, dtype)
    acc = jnp.asarray(b, dtype)
    for i, tau in enumerate(taus):
        acc = acc + w[i] * jnp.asarray(tau, dtype)
    return acc.astype(jnp.result_type(b))


def combine_leaves(base, vectors: Sequence, leaf_weights) -> object:
    r"""``θ₀ + Σᵢ wᵢ⁽ʲ⁾ τᵢ`` where leaf ``j`` (in ``jax.tree`` order) uses the weights
    ``leaf_weights(j)``, a length-``N`` array (concrete or traced).

    The building block of :func:`task_arithmetic` (the same weights for every
    leaf) and per-layer Self Positioning. Vectors are checked for structure and
    shape only.
    """
    columns = check_trees(base, "base", vectors, "vectors", same_dtype=False)
    _, base_leaves, treedef = leaves_with_paths(base)
    out = [_combine(b, tuple(col), leaf_weights(j))
           for j, (b, col) in enumerate(zip(base_leaves, columns))]
    return jax.tree.unflatten(treedef, out)


def task_arithmetic(base, vectors: Sequence, weights) -> object:
    r"""Task arithmetic: ``θ = θ₀ + Σᵢ wᵢ τᵢ``.

    Args:
      base: parameter pytree ``θ₀``.
      vectors: list of ``N`` task-vector pytrees (:func:`task_vectors`), any float dtype.
      weights: ``N`` numbers (``[N]`` array; may be traced under ``jit``/``grad``).

    Returns:
      pytree like ``base`` (same dtypes), computed as described in the module docstring.

    Example:
      >>> base = {"w": jnp.zeros(3)}
      >>> taus = [{"w": jnp.ones(3)}, {"w": jnp.arange(3.0)}]
      >>> task_arithmetic(base, taus, [0.5, 2.0])["w"].tolist()
      [0.5, 2.5, 4.5]
    """
    n = len(vectors) if isinstance(vectors, (list, tuple)) else 0
    w = jnp.asarray(check_weights(weights, n) if n else weights)
    return combine_leaves(base, vectors, lambda j: w)


def linear(models: Sequence, weights=None, *, normalize: bool = True) -> object:
    r"""Weighted average of parameters (a model soup): ``Σᵢ wᵢ θᵢ / Σᵢ wᵢ``.

    Args:
      models: list of ``N`` pytrees with identical structure, shapes and dtypes.
      weights: ``N`` numbers; ``None`` = uniform (the uniform soup).
      normalize: divide by ``Σ wᵢ`` (default). ``False`` gives ``Σᵢ wᵢ θᵢ``.

    Returns:
      pytree like ``models[0]`` in its dtypes, computed in float32 (see module docstring).
    """
    if isinstance(models, dict) or not isinstance(models, Sequence) or len(models) == 0:
        raise ValueError("models must be a non-empty list of parameter trees")
    n = len(models)
    w = np.full(n, 1.0 / n) if weights is None else check_weights(weights, n)
    if normalize:
        total = w.sum()
        if not isinstance(total, jax.core.Tracer) and total == 0:
            raise ValueError(f"weights sum to 0, cannot normalise: {weights!r}")
        w = w / total
    check_trees(models[0], "models[0]", models, "models", same_dtype=True)
    # Σᵢ wᵢ θᵢ = 0 + Σᵢ wᵢ θᵢ: the task-arithmetic kernel with a zero base
    w = jnp.asarray(w)
    return jax.tree.map(lambda *xs: _combine(jnp.zeros((), jnp.result_type(xs[0])), xs, w), *models)
