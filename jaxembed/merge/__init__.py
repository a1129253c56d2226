"""Model merging over parameter pytrees: pure functions, no model, no trainer.

Every function takes parameter pytrees (e.g. ``Encoder.params``) of identical
structure, computes each leaf in float32 (float64 leaves in float64 under x64)
and returns leaves in the base's dtype; mismatched trees, shapes or dtypes raise
``ValueError`` naming the leaf path. All are ``jit``-able and keep
``NamedSharding``s (elementwise, or per-tensor reductions).

Which merge when
----------------
* Several fine-tunes of one base, equal trust, no data: :func:`linear` (a
  uniform model soup) or :func:`task_arithmetic` with weights ``1/N`` (the
  same point), ``> 1/N`` to extrapolate.
* Two checkpoints (e.g. the last and an earlier one of a run, or two
  fine-tunes): :func:`slerp`.
* Many task vectors that interfere (sign conflicts, redundant small
  updates): :func:`ties`; :func:`dare` to sparsify each vector first.
* A small labelled probe set per task and a loss: :func:`self_positioning`
  fits the coefficients of ``θ₀ + Σ λᵢ τᵢ`` by gradient descent (global or per
  layer). The ``jaxembed merge`` command wraps all of these for model folders.

Example::

    from jaxembed.merge import task_vectors, task_arithmetic
    taus = task_vectors(base.params, [m.params for m in models])
    merged = task_arithmetic(base.params, taus, [0.5, 0.5])
    base.replace(params=merged).save_pretrained("merged/")
"""

import importlib

# name -> submodule; imported lazily so that ``jaxembed merge --help`` does not load jax
_EXPORTS = {
    "task_vectors": "arithmetic",
    "task_arithmetic": "arithmetic",
    "combine_leaves": "arithmetic",
    "linear": "arithmetic",
    "slerp": "spherical",
    "trim": "sparsify",
    "elect_and_merge": "sparsify",
    "ties_vector": "sparsify",
    "ties": "sparsify",
    "dare": "sparsify",
    "self_positioning": "positioning",
    "SelfPositioningResult": "positioning",
    "layer_group": "positioning",
}


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f"jaxembed.merge.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'jaxembed.merge' has no attribute {name!r}")


__all__ = list(_EXPORTS)
