"""Pytree checks and the dtype policy shared by the merge functions.

Every merge computes in ``compute_dtype(leaf.dtype)`` (float32 for bfloat16,
float16 and float32 leaves; float64 for float64 leaves when x64 is on) and
casts the result back to the base leaf's dtype. Errors are ``ValueError``s that
name the leaf path (``embeddings/word_embeddings/embedding``) and the shapes.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def leaf_path(path) -> str:
    """A key path as ``a/b/c``."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def leaves_with_paths(tree) -> tuple[list[str], list[Any], Any]:
    """``(paths, leaves, treedef)`` of ``tree``."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [leaf_path(p) for p, _ in flat], [x for _, x in flat], treedef


def compute_dtype(dtype) -> np.dtype:
    """The dtype a merge computes in: at least float32."""
    return jnp.promote_types(dtype, jnp.float32)


def _check_floating(paths, leaves, name: str) -> None:
    for path, x in zip(paths, leaves):
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            raise ValueError(
                f"{name}: leaf {path} has dtype {jnp.result_type(x)}; only floating-point "
                "parameters can be merged"
            )


def check_like(ref, ref_name: str, other, name: str, *, same_dtype: bool) -> list:
    """Raise unless ``other`` has ``ref``'s tree structure and leaf shapes (and
    dtypes when ``same_dtype``); return ``other``'s leaves in ``ref``'s order."""
    ref_paths, ref_leaves, ref_def = leaves_with_paths(ref)
    paths, leaves, treedef = leaves_with_paths(other)
    if treedef != ref_def:
        missing = sorted(set(ref_paths) - set(paths))
        extra = sorted(set(paths) - set(ref_paths))
        raise ValueError(
            f"{name} does not have the parameter tree of {ref_name}: "
            f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}"
            + ("" if missing or extra else f" (same leaves, different containers: {treedef})")
        )
    _check_floating(paths, leaves, name)
    for path, r, x in zip(paths, ref_leaves, leaves):
        if np.shape(x) != np.shape(r):
            raise ValueError(
                f"{name}: leaf {path} has shape {np.shape(x)}, {ref_name} has {np.shape(r)}"
            )
        if same_dtype and jnp.result_type(x) != jnp.result_type(r):
            raise ValueError(
                f"{name}: leaf {path} has dtype {jnp.result_type(x)}, {ref_name} has "
                f"{jnp.result_type(r)} (cast both to one dtype first)"
            )
    return leaves


def check_trees(ref, ref_name: str, others: Sequence, name: str, *, same_dtype: bool) -> list:
    """``check_like`` for every tree of ``others``; returns per-leaf lists of their
    leaves: ``out[j][i]`` is leaf ``j`` of ``others[i]``."""
    if isinstance(others, dict) or not isinstance(others, Sequence) or len(others) == 0:
        raise ValueError(f"{name} must be a non-empty list of parameter trees")
    _, ref_leaves, _ = leaves_with_paths(ref)
    _check_floating(*leaves_with_paths(ref)[:2], ref_name)
    per_tree = [
        check_like(ref, ref_name, t, f"{name}[{i}]", same_dtype=same_dtype)
        for i, t in enumerate(others)
    ]
    return [list(col) for col in zip(*per_tree)] if ref_leaves else []


def check_vectors(vectors: Sequence, name: str = "vectors") -> tuple[list, Any]:
    """Per-leaf columns of a list of like-shaped trees (checked against the first),
    and the treedef."""
    if isinstance(vectors, dict) or not isinstance(vectors, Sequence) or len(vectors) == 0:
        raise ValueError(f"{name} must be a non-empty list of parameter trees")
    columns = check_trees(vectors[0], f"{name}[0]", vectors, name, same_dtype=False)
    return columns, leaves_with_paths(vectors[0])[2]


def check_weights(weights, n: int, name: str = "weights"):
    """``weights`` as a length-``n`` float array (NumPy if concrete, else the tracer)."""
    if isinstance(weights, jax.core.Tracer):
        w = weights
    else:
        w = np.asarray(weights, dtype=np.float64)
        if not np.all(np.isfinite(w)):
            raise ValueError(f"{name} must be finite, got {weights!r}")
    if w.ndim != 1 or w.shape[0] != n:
        raise ValueError(f"{name} must hold one number per model ({n}), got shape {tuple(w.shape)}")
    return w


def check_fraction(value, name: str, *, low_open: bool, high_open: bool) -> float:
    """A concrete number in the interval ``(0|[0, 1)|1]``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = None
    if isinstance(value, bool) or v is None or np.ndim(value) != 0:
        raise ValueError(f"{name} must be a number, got {value!r}")
    lo_ok = v > 0 if low_open else v >= 0
    hi_ok = v < 1 if high_open else v <= 1
    if not (lo_ok and hi_ok):
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return v
