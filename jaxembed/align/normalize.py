"""Embedding normalisation chains as MUSE and VecMap apply them before mapping.

A chain is a comma-separated list applied left to right, e.g.
``"renorm,center,renorm"`` (the Sinhala-English paper's MUSE setting) or
VecMap's ``"unit,center,unit"``:

* ``renorm`` / ``unit``: x_i <- x_i / ||x_i||_2 (zero rows stay zero).
* ``center``: x_i <- x_i - mean_j x_j (mean over words, per dimension).
* ``unitdim``: each dimension (column) divided by its L2 norm (VecMap).
* ``centeremb``: x_i <- x_i - mean_d x_id (each vector's own mean, VecMap).
* ``""`` / ``none``: nothing.

Reductions are accumulated in float64; the result keeps the input dtype.

References: MUSE ``src/utils.py`` (normalize_embeddings); Artetxe et al.,
VecMap ``embeddings.py`` (normalize).
"""

from __future__ import annotations

import numpy as np

__all__ = ["NORMALIZATIONS", "normalize_embeddings", "parse_chain"]


def _renorm(x):
    norms = np.sqrt(np.einsum("nd,nd->n", x, x, dtype=np.float64))
    return x / np.where(norms > 0, norms, 1.0)[:, None].astype(x.dtype)


def _center(x):
    return x - x.mean(axis=0, dtype=np.float64).astype(x.dtype)[None, :]


def _unitdim(x):
    norms = np.sqrt(np.einsum("nd,nd->d", x, x, dtype=np.float64))
    return x / np.where(norms > 0, norms, 1.0)[None, :].astype(x.dtype)


def _centeremb(x):
    return x - x.mean(axis=1, dtype=np.float64).astype(x.dtype)[:, None]


NORMALIZATIONS = {
    "renorm": _renorm,
    "unit": _renorm,
    "center": _center,
    "unitdim": _unitdim,
    "centeremb": _centeremb,
}


def parse_chain(chain) -> list[str]:
    """``"renorm, center,renorm"`` -> ``["renorm", "center", "renorm"]``; validates the names."""
    if chain is None:
        return []
    steps = [s.strip() for s in chain.split(",")] if isinstance(chain, str) else list(chain)
    steps = [s for s in steps if s and s != "none"]
    unknown = [s for s in steps if s not in NORMALIZATIONS]
    if unknown:
        raise ValueError(
            f"unknown normalisation {unknown}; expected names from {sorted(NORMALIZATIONS)}"
        )
    return steps


def normalize_embeddings(x, chain) -> np.ndarray:
    """Apply a normalisation chain to embeddings x [n, d].

    Example:
        >>> y = normalize_embeddings(x, "renorm,center,renorm")  # doctest: +SKIP
        >>> np.allclose(np.linalg.norm(y, axis=1), 1)  # doctest: +SKIP
        True
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [n, d], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    for step in parse_chain(chain):
        x = NORMALIZATIONS[step](x)
    return x
