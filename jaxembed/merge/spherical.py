r"""Spherical linear interpolation (slerp) of two parameter pytrees, tensor by tensor.

For each leaf, flattened to vectors ``a`` and ``b`` with angle
``Ω = arccos(⟨a, b⟩ / (‖a‖ ‖b‖))``:

.. math::
   \operatorname{slerp}(a, b; t) = \frac{\sin((1-t)\,Ω)}{\sin Ω}\, a
                                 + \frac{\sin(t\,Ω)}{\sin Ω}\, b ,

Shoemake's formula applied to the raw tensors (the mergekit convention): the
direction moves along the great circle at constant angular speed, and for
``‖a‖ = ‖b‖`` the norm is kept. ``t = 0`` gives ``a`` and ``t = 1`` gives ``b``
exactly (the coefficients are exactly 1 and 0 there).

Where the angle is undefined or ill-conditioned the leaf falls back to linear
interpolation ``(1 - t) a + t b``:

* parallel or antiparallel leaves, ``|cos Ω| > parallel_threshold`` (default
  0.9995, mergekit's): for parallel ones slerp and lerp agree to ``O(Ω²)``; for
  antiparallel ones every great circle joins ``a`` and ``b``, so slerp has no
  unique answer and we choose the straight line;
* a zero leaf (``‖a‖ = 0`` or ``‖b‖ = 0``, e.g. a bias initialised to zero and
  never trained): no direction exists.

Computed per leaf in float32 (elementwise products and sums only, so no
reduced-precision matmul passes on TPU/GPU), cast back to ``a``'s dtype.

Example::

    merged = slerp(params_a, params_b, 0.5)

References: Shoemake 1985, "Animating rotation with quaternion curves"
(SIGGRAPH); White 2016, "Sampling Generative Networks" (arXiv 1609.04468);
mergekit's ``slerp`` merge method.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxembed.merge._tree import check_fraction, check_trees, compute_dtype

PARALLEL_THRESHOLD = 0.9995


@functools.partial(jax.jit, static_argnums=3)
def _slerp_leaf(a, b, t, parallel_threshold):
    dtype = compute_dtype(jnp.result_type(a))
    x, y = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
    t = jnp.asarray(t, dtype)
    lerp = (1 - t) * x + t * y
    nx = jnp.sqrt(jnp.sum(x * x))
    ny = jnp.sqrt(jnp.sum(y * y))
    degenerate = (nx == 0) | (ny == 0)
    cos = jnp.clip(jnp.sum(x * y) / jnp.where(degenerate, 1, nx * ny), -1, 1)
    use_lerp = degenerate | (jnp.abs(cos) > parallel_threshold)
    omega = jnp.arccos(jnp.where(use_lerp, 0.0, cos))
    sin_omega = jnp.where(use_lerp, 1, jnp.sin(omega))
    curved = (jnp.sin((1 - t) * omega) / sin_omega) * x + (jnp.sin(t * omega) / sin_omega) * y
    return jnp.where(use_lerp, lerp, curved).astype(jnp.result_type(a))


def slerp(a, b, t, *, parallel_threshold: float = PARALLEL_THRESHOLD):
    """Slerp every leaf of ``a`` towards ``b`` by ``t`` (see module docstring).

    Args:
      a: parameter pytree (``t = 0``).
      b: pytree with ``a``'s structure, leaf shapes and dtypes (``t = 1``).
      t: scalar in ``[0, 1]`` (may be traced; checked when concrete).
      parallel_threshold: ``|cos Ω|`` above which a leaf is linearly interpolated.

    Returns:
      pytree like ``a``, in ``a``'s dtypes.
    """
    if not isinstance(t, jax.core.Tracer):
        check_fraction(t, "t", low_open=False, high_open=False)
    check_fraction(parallel_threshold, "parallel_threshold", low_open=True, high_open=False)
    check_trees(a, "a", [b], "b", same_dtype=True)
    t, threshold = jnp.asarray(t), float(parallel_threshold)
    return jax.tree.map(lambda x, y: _slerp_leaf(x, y, t, threshold), a, b)
