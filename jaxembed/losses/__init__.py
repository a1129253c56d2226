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
  contradiction: :func:`info_nce` with ``negatives=`` [B, D] (SimCSE
  supervised); ``hard_negative_weight=`` is SimCSE's ``log alpha`` on each
  row's own hard negative (0 in the paper's best setting).
* Retrieval pairs with mined hard negatives, LLM embedders (e5-mistral,
  NV-Embed, GTE, Qwen3-Embedding): :func:`info_nce` with ``negatives=``
  [B, K, D], K per query. Mined negatives and large batches bring false
  negatives (a relevant passage labelled negative, the same passage paired
  with two queries): ``false_negative_margin=0.1`` drops any negative scoring
  more than 0.1 (cosine) above the positive (Qwen3-Embedding; it filters at
  every step what positive-aware mining such as NV-Embed's filters once,
  offline), and ``document_ids=`` drops exact duplicates of the positive,
  which no margin ``>= 0`` catches. ``query_query_negatives=`` and
  ``document_document_negatives=`` (GTE's "improved contrastive loss",
  Qwen3-Embedding) add same-tower similarities to the partition function:
  more negatives from the same batch, for one more ``B × B`` and
  ``B × B(1+K)`` block of scores.
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
