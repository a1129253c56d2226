"""InfoNCE with in-batch, hard and same-tower negatives.

SimCSE's objective, and the options of the LLM-embedder recipes (e5-mistral,
NV-Embed, GTE, Qwen3-Embedding): several hard negatives per row, SimCSE's
hard-negative weight, false-negative masking, query–query and
document–document negatives. The loss for anchor row ``i`` is the
cross-entropy of picking its positive among its candidates; the candidates'
log-partition comes from :mod:`jaxembed.losses._negatives` (all logits at
once, or streamed in blocks with ``chunk_size``).
"""

from __future__ import annotations

import numbers
from collections.abc import Hashable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxembed.losses._checks import (
    as_float32,
    check_choice,
    check_ndim,
    check_positive,
    check_positive_int,
    check_same_shape,
    replicate_explicit,
)
from jaxembed.losses._negatives import Candidates, Rows, fold, streamed_logsumexp, term_logits
from jaxembed.losses.normalize import l2_normalize

__all__ = ["info_nce"]


def _cross_entropy_rows(terms, positive_logit, *, chunk_size):
    r"""Per-row ``log(e^{z⁺} + Σ_terms Σ_j e^{z_j}) - z⁺``, accurately.

    With ``m`` a stop-gradient max (at least the positive logit ``z⁺``) and
    ``s = Σ_j e^{z_j - m}`` over the kept negatives of every term, the row loss
    is ``(m - z⁺) + log1p(expm1(z⁺ - m) + s)``, which keeps full relative
    precision when the loss is tiny (``m = z⁺``: ``log1p(s)``) instead of
    cancelling ``logsumexp - z⁺``; the expression does not depend on ``m``, so
    stopping its gradient is exact. A row with no negative left gives 0.

    ``chunk_size=None`` folds every term's logits as one block (plain
    autodiff). An integer streams each term over blocks of ``chunk_size``
    candidates (:func:`~jaxembed.losses._negatives.streamed_logsumexp`, whose
    custom VJP recomputes each block in the backward pass) and folds the terms'
    log-sums: at most one [M, chunk_size] block of logits is alive at a time.
    """
    init = (jax.lax.stop_gradient(positive_logit), jnp.zeros_like(positive_logit))
    if chunk_size is None:
        logits = jnp.concatenate([term_logits(*term) for term in terms], axis=1)
    else:
        chunk = check_positive_int(chunk_size, "chunk_size")
        logits = jnp.stack([streamed_logsumexp(*term, chunk) for term in terms], axis=1)
    m, s = fold(init, logits)
    return (m - positive_logit) + jnp.log1p(jnp.expm1(positive_logit - m) + s)


def _gather(x, axis_name):
    if axis_name is None:
        return replicate_explicit(x)
    return jax.lax.all_gather(x, axis_name, axis=0, tiled=True)


def _hard_negatives(negatives, anchors):
    """``negatives`` as float32 [B, K, D] (a [B, D] array is K = 1), or ``None``."""
    if negatives is None:
        return None
    n = as_float32(negatives, "negatives")
    if n.ndim == 2:
        check_same_shape(anchors, "anchors", n, "negatives")
        return n[:, None, :]
    b, d = anchors.shape
    if n.ndim != 3 or n.shape[0] != b or n.shape[2] != d:
        raise ValueError(
            f"negatives must have shape [B, D] or [B, K, D] with (B, D) = {(b, d)} "
            f"of anchors, got shape {tuple(n.shape)}"
        )
    return n


def _document_ids(document_ids, batch, num_negatives):
    """``document_ids`` as an int [B, 1 + K] array, or ``None``."""
    if document_ids is None:
        return None
    ids = jnp.asarray(document_ids)
    want = (batch,) if num_negatives is None else (batch, 1 + num_negatives)
    if not jnp.issubdtype(ids.dtype, jnp.integer) or tuple(ids.shape) != want:
        layout = "[B]" if num_negatives is None else "[B, 1 + K]"
        raise ValueError(
            f"document_ids must be an integer array of shape {layout} = {want}, "
            f"got dtype {ids.dtype} and shape {tuple(ids.shape)}"
        )
    return ids.reshape(batch, -1)


def _check_real(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
        raise ValueError(f"{name} must be a real Python number, got {value!r}")
    return float(value)


def info_nce(
    anchors: ArrayLike,
    positives: ArrayLike,
    negatives: ArrayLike | None = None,
    *,
    temperature: ArrayLike = 0.05,
    similarity: str = "cosine",
    hard_negative_weight: float = 0.0,
    false_negative_margin: float | None = None,
    document_ids: ArrayLike | None = None,
    query_query_negatives: bool = False,
    document_document_negatives: bool = False,
    axis_name: Hashable | tuple[Hashable, ...] | None = None,
    chunk_size: int | None = None,
) -> jax.Array:
    r"""InfoNCE / NT-Xent with in-batch negatives and optional hard, same-tower negatives.

    Write ``q_i`` for anchor ``i`` (a query), ``d_i⁺`` for its positive (a
    document), ``d⁻_{i,k}`` for its ``k``-th hard negative and
    ``s(x, y)`` for the similarity (cosine, or the dot product).

    Args:
      anchors: [B, D] any float dtype: the queries ``q``.
      positives: [B, D]: row ``i`` is the positive ``d_i⁺`` of anchor ``i``
        and a negative of every other anchor.
      negatives: optional hard negatives, [B, K, D] (``K >= 0`` per row) or
        [B, D] (one per row, SimCSE supervised). Every anchor sees all
        ``B·K`` of them as negatives (its own and the other rows').
      temperature: ``tau > 0`` (SimCSE: 0.05; Qwen3-Embedding, e5-mistral:
        0.02). May be a traced scalar.
      similarity: ``"cosine"`` (rows L2-normalised first) or ``"dot"``.
      hard_negative_weight: SimCSE's ``hard_negative_weight``, ``log alpha``
        (a Python float, default 0): added to the logit ``s(q_i, d⁻_{i,k})/tau``
        of each row's *own* hard negatives only (SimCSE adds it to the diagonal
        of the hard-negative block); other rows' hard negatives are not shifted.
      false_negative_margin: ``delta`` (a Python float; Qwen3-Embedding: 0.1) or
        ``None`` (off): every negative of row ``i`` — in-batch, hard,
        query–query, document–document — whose similarity exceeds the
        positive's by more than ``delta``, ``s_ij > s(q_i, d_i⁺) + delta``, is
        dropped from the partition function (weight 0, as Qwen3-Embedding's
        ``m_ij``). ``s`` is the *unscaled* similarity (cosine for
        ``"cosine"``), before ``hard_negative_weight``; the test is evaluated on
        the float32 logits as ``s_ij/tau > (s(q_i, d_i⁺) + delta)/tau``. The mask
        is a stop-gradient step function: no gradient flows through the
        comparison, and a dropped negative gets none. An exact duplicate of the
        positive scores ``s_ij = s(q_i, d_i⁺)`` and is *not* dropped for
        ``delta >= 0``: use ``document_ids``.
      document_ids: optional integer ids of the documents (e.g. a hash of the
        text), [B] for the positives or, with ``negatives``, [B, 1 + K]
        (column 0 the positive, then the hard negatives): any document whose id
        equals the row's positive's id is dropped as a negative of that row
        (Qwen3-Embedding's ``d_j = d_i⁺`` test), e.g. the same passage paired
        with two queries of the batch.
      query_query_negatives: add ``e^{s(q_i, q_j)/tau}`` for every other query
        ``j ≠ i`` of the (global) batch to row ``i``'s partition function (GTE,
        Qwen3-Embedding). Duplicate queries are not detected by
        ``document_ids``; ``false_negative_margin`` drops them (``s = 1``).
      document_document_negatives: add ``e^{s(d_i⁺, d_j)/tau}`` for every
        document ``d_j`` of the (global) batch that is not row ``i``'s own (the
        other rows' positives and hard negatives; row ``i``'s own hard
        negatives are not, as sentence-transformers' ``doc_to_doc``).
      axis_name: inside ``shard_map`` / ``pmap`` with the batch split over this
        mesh axis (or tuple of axes): positives, hard negatives, queries and ids
        are all-gathered so every anchor sees the *global* batch (its own
        entries found by a per-device label offset), and the local mean is
        ``pmean``-ed, so the value is the global-batch loss on every device.
        Not needed under plain ``jax.jit`` with sharded inputs (XLA inserts the
        collectives itself).
      chunk_size: ``None`` builds each row's logits at once; an integer
        streams over blocks of ``chunk_size`` candidates with an online
        logsumexp, so the full logits never materialise, forward or backward
        (a custom VJP re-streams the blocks: memory O(B·chunk_size + B·D)).
        Same value and gradient, with every option.

    Returns:
      scalar float32: the mean over the (global) batch of

      .. math::
         \ell_i = -\log \frac{e^{z_i^+}}{e^{z_i^+} + \sum_{j \ne i} m_{ij}
              e^{s(q_i, d_j^+)/\tau}
            + \sum_{j, k} m_{ijk} e^{s(q_i, d^-_{j,k})/\tau + w [j = i]}
            + Q_i + D_i},
         \qquad z_i^+ = s(q_i, d_i^+)/\tau,

      with ``w = hard_negative_weight``, ``m ∈ {0, 1}`` the masks of
      ``false_negative_margin`` and ``document_ids`` (1 when both are off),
      ``Q_i = Σ_{j≠i} m e^{s(q_i, q_j)/τ}`` when ``query_query_negatives`` and
      ``D_i = Σ_{d ∉ row i} m e^{s(d_i⁺, d)/τ}`` when
      ``document_document_negatives`` (else 0). With the defaults this is the
      cross-entropy of SimCSE's ``[q·d⁺ᵀ | q·d⁻ᵀ] / tau`` logits with labels
      ``arange(B)``. The positive logit is taken from the row's own pair and
      left out of the running sum, so a near-zero loss keeps its relative
      precision (``log1p`` of the negatives' mass) instead of cancelling. A row
      whose negatives are all dropped contributes 0 (its partition function is
      its positive alone) and no gradient.

    Example:
      >>> a = jax.random.normal(jax.random.key(0), (8, 16))
      >>> p = a + 0.1 * jax.random.normal(jax.random.key(1), (8, 16))
      >>> float(info_nce(a, p)) < float(info_nce(a, jnp.roll(p, 1, axis=0)))
      True
      >>> negs = jax.random.normal(jax.random.key(2), (8, 3, 16))  # 3 hard negatives a row
      >>> qwen3 = info_nce(a, p, negs, temperature=0.02, false_negative_margin=0.1,
      ...                  query_query_negatives=True, document_document_negatives=True)
      >>> qwen3.shape
      ()

    References:
      van den Oord et al. 2018, "Representation Learning with Contrastive
      Predictive Coding" (arXiv 1807.03748); Gao et al. 2021, "SimCSE"
      (arXiv 2104.08821), Eq. 1 and Eq. 5, and its code's
      ``hard_negative_weight``; Li et al. 2023, "Towards General Text
      Embeddings with Multi-stage Contrastive Learning" (GTE, arXiv 2308.03281),
      the improved contrastive loss (its partition function also has a
      document-to-query term ``Σ_j e^{s(q_j, d_i)/τ}``, not included here);
      Zhang et al. 2025, "Qwen3 Embedding" (arXiv 2506.05176), the training
      objective: InfoNCE with ``Z_i`` over hard, query–query,
      document–document and in-batch negatives and the false-negative mask
      ``m_ij`` (0 if ``s_ij > s(q_i, d_i⁺) + 0.1`` or ``d_j = d_i⁺``); Wang et
      al. 2024, "Improving Text Embeddings with Large Language Models"
      (e5-mistral, arXiv 2401.00368); Lee et al. 2024, "NV-Embed" (arXiv
      2405.17428).
    """
    check_choice(similarity, {"cosine", "dot"}, "similarity")
    check_positive(temperature, "temperature")
    hard_negative_weight = _check_real(hard_negative_weight, "hard_negative_weight")
    margin = false_negative_margin
    if margin is not None:
        margin = _check_real(margin, "false_negative_margin")
    a = as_float32(anchors, "anchors")
    check_ndim(a, 2, "anchors", "[B, D]")
    p = as_float32(positives, "positives")
    check_same_shape(a, "anchors", p, "positives")
    n = _hard_negatives(negatives, a)
    if hard_negative_weight and n is None:
        raise ValueError("hard_negative_weight needs negatives (it shifts their logits)")
    local_batch, dim = a.shape
    num_neg = None if n is None else n.shape[1]
    ids = _document_ids(document_ids, local_batch, num_neg)
    if similarity == "cosine":
        a, p = l2_normalize(a), l2_normalize(p)
        n = None if n is None else l2_normalize(n)
    scale = 1.0 / jnp.asarray(temperature, jnp.float32)
    offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local_batch
    labels = offset + jnp.arange(local_batch)
    positive_logit = scale * jnp.sum(a * p, axis=-1)
    threshold = None
    if margin is not None:
        threshold = jax.lax.stop_gradient(positive_logit + scale * margin)
    rows = Rows(scale * a, labels, threshold, None if ids is None else ids[:, 0])

    gather = lambda x: None if x is None else _gather(x, axis_name)  # noqa: E731
    docs = gather(p)
    global_batch = docs.shape[0]
    doc_ids = None if ids is None else gather(ids[:, 0])
    documents = Candidates(docs, jnp.arange(global_batch), doc_ids)
    terms = [(rows, documents, None)]
    if num_neg:
        hard = Candidates(
            gather(n).reshape(-1, dim),
            jnp.arange(global_batch * num_neg) // num_neg,
            None if ids is None else gather(ids[:, 1:]).reshape(-1),
        )
        terms.append((rows, hard, hard_negative_weight))
        documents = Candidates(
            *(None if x is None else jnp.concatenate([x, y]) for x, y in zip(documents, hard))
        )
    if query_query_negatives:
        terms.append((rows, Candidates(gather(a), jnp.arange(global_batch)), None))
    if document_document_negatives:
        terms.append((rows._replace(vectors=scale * p), documents, None))
    loss = jnp.mean(_cross_entropy_rows(terms, positive_logit, chunk_size=chunk_size))
    if axis_name is not None:
        loss = jax.lax.pmean(loss, axis_name)
    return loss
