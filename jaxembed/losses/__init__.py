"""Loss functions for sentence embeddings: pure JAX, no model state.

Every function takes arrays of any float dtype, computes in float32 and
returns float32; hyper-parameters are keyword-only; bad shapes raise
``ValueError`` naming the shapes. All are ``jit``/``grad``/``vmap``-able and
give the same value on sharded inputs under ``jax.jit``; inside
``shard_map`` pass ``axis_name=`` to get the global-batch value.

Which loss when
---------------
* Pairs of texts that should be close, no labels (dropout views, question /
  answer, title / body): :func:`info_nce` (SimCSE unsupervised, MNRL in
  sentence-transformers). Larger batches give more in-batch negatives; use
  :func:`grad_cache` when the batch does not fit and ``chunk_size=`` when the
  ``B × B`` logits do not.
* Triplets (anchor, positive, hard negative), e.g. NLI entailment /
  contradiction: :func:`info_nce` with ``negatives=`` (SimCSE supervised).
* Unsupervised training where embeddings collapse into a narrow cone:
  :func:`whitened_cse` (shuffled group whitening + InfoNCE over 3 views);
  the whitening itself is :func:`group_whitening` /
  :func:`shuffled_group_whitening`.
* A cross-encoder or large teacher gives scores for sentence pairs and a
  cheap siamese student must mimic them: :func:`pair_features` +
  :func:`distill_mse` (DSE).
* Embeddings must stay useful when truncated: wrap any loss in
  :func:`matryoshka`; when they must also work from early layers (early
  exit), :func:`matryoshka_2d`.
* Diagnostics, not training: :func:`alignment` and :func:`uniformity`.
* Unit-norm rows with a finite gradient at zero (what every cosine loss
  here uses): :func:`l2_normalize`.
"""

from jaxembed.losses.contrastive import info_nce
from jaxembed.losses.distillation import distill_mse, pair_features
from jaxembed.losses.geometry import alignment, uniformity
from jaxembed.losses.grad_cache import chunk_keys, grad_cache
from jaxembed.losses.matryoshka import matryoshka, matryoshka_2d
from jaxembed.losses.normalize import l2_normalize
from jaxembed.losses.whitened_cse import whitened_cse
from jaxembed.losses.whitening import group_covariance, group_whitening, shuffled_group_whitening
from jaxembed.losses.whitening_matrices import (
    cholesky_matrix,
    newton_schulz_matrix,
    whitening_matrix,
    zca_matrix,
)

__all__ = [
    "info_nce",
    "group_whitening",
    "shuffled_group_whitening",
    "group_covariance",
    "whitened_cse",
    "whitening_matrix",
    "zca_matrix",
    "cholesky_matrix",
    "newton_schulz_matrix",
    "pair_features",
    "distill_mse",
    "matryoshka",
    "matryoshka_2d",
    "alignment",
    "uniformity",
    "l2_normalize",
    "grad_cache",
    "chunk_keys",
]
