"""Independent float64 references for the loss tests (NumPy for values, torch for gradients)."""

from __future__ import annotations

import numpy as np
from _optional import torch


def np_normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _negatives3(n, b, d, xp):
    """Hard negatives as [B, K, D]: ``None`` is K = 0, a [B, D] array K = 1."""
    if n is None:
        return xp.zeros((b, 0, d), dtype=xp.float64)
    return n[:, None, :] if n.ndim == 2 else n


def np_info_nce(
    a,
    p,
    n=None,
    *,
    temperature=0.05,
    similarity="cosine",
    hard_negative_weight=0.0,
    false_negative_margin=None,
    document_ids=None,
    query_query_negatives=False,
    document_document_negatives=False,
):
    """The loss written row by row from its definition (Qwen3-Embedding's Z_i, SimCSE's
    hard-negative weight), in float64: every negative is listed one at a time."""
    a, p = np.asarray(a, np.float64), np.asarray(p, np.float64)
    b, d = a.shape
    n = _negatives3(None if n is None else np.asarray(n, np.float64), b, d, np)
    k = n.shape[1]
    if similarity == "cosine":
        a, p, n = np_normalize(a), np_normalize(p), np_normalize(n)
    ids = None if document_ids is None else np.asarray(document_ids).reshape(b, -1)
    losses = []
    for i in range(b):
        s_pos = a[i] @ p[i]
        logits = []

        def add(score, doc_id=None, shift=0.0):
            if false_negative_margin is not None and score > s_pos + false_negative_margin:
                return  # Qwen3's m_ij = 0: a likely false negative
            if doc_id is not None and doc_id == ids[i, 0]:
                return  # the row's own positive again (d_j = d_i+)
            logits.append(score / temperature + shift)

        doc_id = (lambda j, c: None) if ids is None else (lambda j, c: ids[j, c])  # noqa: E731
        for j in range(b):
            if j != i:
                add(a[i] @ p[j], doc_id(j, 0))
            for c in range(k):
                add(a[i] @ n[j, c], doc_id(j, 1 + c), hard_negative_weight if j == i else 0.0)
        for j in range(b):
            if j == i:
                continue
            if query_query_negatives:
                add(a[i] @ a[j])
            if document_document_negatives:
                add(p[i] @ p[j], doc_id(j, 0))
                for c in range(k):
                    add(p[i] @ n[j, c], doc_id(j, 1 + c))
        # -log(e^z+ / (e^z+ + sum e^z)) = log(1 + sum e^(z - z+)), exact for tiny losses
        margins = np.asarray(logits) - s_pos / temperature
        if margins.size == 0:
            losses.append(0.0)
            continue
        m = margins.max()
        losses.append(np.logaddexp(0.0, m + np.log(np.exp(margins - m).sum())))
    return float(np.mean(losses))


def info_nce_temperature_grad_scale(a, p, n=None, *, temperature):
    """The size of the terms that dL/dtau sums, in float64 (cosine scores).

    dL/dtau = mean_i (sum_j p_ij s_ij - s_ii) / tau^2 cancels, often to near zero, so
    float32's error in it tracks this scale, not |dL/dtau|: compare against it.
    """
    a = np_normalize(np.asarray(a, np.float64))
    cands = np.asarray(p, np.float64) if n is None else np.concatenate([p, n], 0).astype(np.float64)
    s = a @ np_normalize(cands).T
    z = s / temperature
    prob = np.exp(z - z.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    rows = np.arange(len(a))
    return float(np.mean(np.abs(s[rows, rows]) + (prob * np.abs(s)).sum(1)) / temperature**2)


def np_group_whitening(x, num_groups, eps=0.0):
    x = np.asarray(x, np.float64)
    b, d = x.shape
    c = d // num_groups
    xc = x - x.mean(0)
    out = np.empty_like(xc)
    for g in range(num_groups):
        blk = xc[:, g * c : (g + 1) * c]
        lam, u = np.linalg.eigh(blk.T @ blk / b)
        out[:, g * c : (g + 1) * c] = blk @ (u @ np.diag((lam + eps) ** -0.5) @ u.T)
    return out


def torch_info_nce(
    a,
    p,
    n=None,
    *,
    temperature=0.05,
    similarity="cosine",
    hard_negative_weight=0.0,
    false_negative_margin=None,
    document_ids=None,
    query_query_negatives=False,
    document_document_negatives=False,
):
    """The same loss as one cross-entropy over a masked logit matrix (torch, for gradients):
    columns [d+ (B) | d- (B*K) | q (B) | docs from d_i+ (B + B*K)], dropped entries -inf."""
    b, d = a.shape
    n = _negatives3(n, b, d, torch).reshape(-1, d)
    k = n.shape[0] // b
    if similarity == "cosine":
        a, p, n = (torch.nn.functional.normalize(x, dim=-1) for x in (a, p, n))
    docs = torch.cat([p, n], 0)
    owner = torch.cat([torch.arange(b), torch.arange(b * k) // max(k, 1)])
    rows = torch.arange(b)[:, None]
    own = owner[None, :] == rows
    blocks = [a @ docs.T]
    bias = [hard_negative_weight * (own & (torch.arange(b + b * k) >= b)).double()]
    drop = [own & (torch.arange(b + b * k) < b)]  # the positive column itself, handled below
    if query_query_negatives:
        blocks.append(a @ a.T)
        bias.append(torch.zeros(b, b, dtype=torch.float64))
        drop.append(torch.eye(b, dtype=torch.bool))
    if document_document_negatives:
        blocks.append(p @ docs.T)
        bias.append(torch.zeros(b, b + b * k, dtype=torch.float64))
        drop.append(own)
    scores, bias, drop = torch.cat(blocks, 1), torch.cat(bias, 1), torch.cat(drop, 1)
    s_pos = (a * p).sum(-1)
    if false_negative_margin is not None:
        drop = drop | (scores > (s_pos + false_negative_margin)[:, None]).detach()
    if document_ids is not None:
        ids = torch.as_tensor(np.asarray(document_ids).reshape(b, -1))
        doc_ids = torch.cat([ids[:, 0], ids[:, 1:].reshape(-1)])
        same = doc_ids[None, :] == ids[:, :1]
        queries = torch.zeros(b, b if query_query_negatives else 0, dtype=torch.bool)
        drop = drop | torch.cat([same, queries] + [same] * document_document_negatives, 1)
    logits = (scores / temperature + bias).masked_fill(drop, -torch.inf)
    logits = torch.cat([(s_pos / temperature)[:, None], logits], 1)
    return torch.nn.functional.cross_entropy(logits, torch.zeros(b, dtype=torch.long))


def torch_simcse_supervised(a, p, n, *, temperature=0.05, hard_negative_weight=0.0):
    """SimCSE's supervised objective as its code writes it (``models.py``, ``cl_forward``):
    cosine logits [z1·z2ᵀ | z1·z3ᵀ] / temp, ``hard_negative_weight`` added to the diagonal of
    the hard-negative block, cross-entropy with labels arange(B)."""
    cos = torch.nn.functional.cosine_similarity
    z1_z2 = cos(a[:, None, :], p[None, :, :], dim=-1) / temperature
    z1_z3 = cos(a[:, None, :], n[None, :, :], dim=-1) / temperature
    weights = torch.cat([torch.zeros_like(z1_z2), hard_negative_weight * torch.eye(len(a))], 1)
    logits = torch.cat([z1_z2, z1_z3], 1) + weights
    return torch.nn.functional.cross_entropy(logits, torch.arange(len(a)))


def st_multiple_negatives_ranking(a, p, n=None, *, temperature=0.05, directions=("query_to_doc",)):
    """sentence-transformers' ``MultipleNegativesRankingLoss`` (its GTE "improved contrastive
    loss" variant with ``directions``), on embeddings: negatives [B, K, D] become K columns."""
    from _optional import needs_torch

    needs_torch()
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    loss = MultipleNegativesRankingLoss(
        None, scale=1.0 / temperature, directions=directions, partition_mode="joint"
    )
    columns = [a, p] + ([] if n is None else list(n.unbind(1)))
    return loss.compute_loss_from_embeddings(columns, None)


def torch_group_whitening(x, num_groups, eps=0.0, detach=True):
    """The official WhitenedCSE algorithm: eigh of group covariances, W detached by default."""
    b, d = x.shape
    xc = x - x.mean(0)
    xg = xc.reshape(b, num_groups, d // num_groups).transpose(0, 1)  # [G, B, c]
    cov = xg.transpose(1, 2) @ xg / b
    if detach:
        cov = cov.detach()
    lam, u = torch.linalg.eigh(cov)
    w = u @ torch.diag_embed((lam + eps).rsqrt()) @ u.transpose(1, 2)
    return (xg @ w).transpose(0, 1).reshape(b, d)


def torch_grad(fn, *arrays):
    """Gradients of scalar ``fn`` w.r.t. every array, in float64."""
    ts = [torch.tensor(np.asarray(a, np.float64), requires_grad=True) for a in arrays]
    fn(*ts).backward()
    return [t.grad.numpy() for t in ts]


def rel_err(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))
