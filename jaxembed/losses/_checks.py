"""Argument checks and dtype policy shared by the loss functions.

Every loss computes in float32 whatever the input dtype (bfloat16 encoders
included): logits, covariances and decompositions are float32 islands.
Errors are ``ValueError``s that name the offending shapes.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def as_float32(x, name: str):
    """Return ``x`` as a float32 jax array; reject non-floating inputs."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"{name} must be a floating-point array, got dtype {x.dtype} with shape {x.shape}"
        )
    return x.astype(jnp.float32)


def check_ndim(x, ndim: int, name: str, layout: str) -> None:
    """Raise unless ``x.ndim == ndim``; ``layout`` reads like ``"[B, D]"``."""
    if x.ndim != ndim:
        raise ValueError(f"{name} must have shape {layout}, got shape {tuple(x.shape)}")


def check_same_shape(ref, ref_name: str, x, name: str) -> None:
    if tuple(x.shape) != tuple(ref.shape):
        raise ValueError(
            f"{name} must have the same shape as {ref_name}: got {name} {tuple(x.shape)} "
            f"and {ref_name} {tuple(ref.shape)}"
        )


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_positive(value, name: str) -> None:
    """Raise for a concrete non-positive number; traced values are not checked."""
    if isinstance(value, numbers.Real) and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def check_nonnegative(value, name: str) -> None:
    if isinstance(value, numbers.Real) and not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def check_choice(value, choices, name: str) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")


def explicit_replicated_sharding(x):
    """``NamedSharding(mesh, P())`` if ``x``'s type carries an explicit sharding, else ``None``.

    Pass it as ``out_sharding=`` of a contraction over an explicitly sharded
    batch axis (a covariance ``Xᵀ X``), whose output sharding JAX will not guess.
    """
    sharding = getattr(jax.typeof(x), "sharding", None)
    spec = getattr(sharding, "spec", None)
    if spec is None or all(s is None for s in spec):
        return None
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(sharding.mesh, PartitionSpec())


def replicate_explicit(x):
    """Gather ``x`` onto every device if its type carries an explicit sharding.

    Under a mesh with ``AxisType.Explicit`` axes (``jax.make_mesh``'s default)
    an array sharded over the batch cannot meet another batch-sharded array in
    a ``[B, D] @ [D, B]`` product; the candidates of a contrastive loss must be
    replicated, which is the all-gather the loss means anyway. With ``Auto``
    axes (GSPMD) or unsharded inputs this is a no-op and XLA decides.
    """
    replicated = explicit_replicated_sharding(x)
    return x if replicated is None else jax.sharding.reshard(x, replicated)
