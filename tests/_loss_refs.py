"""Independent float64 references for the loss tests (NumPy for values, torch for gradients)."""

from __future__ import annotations

import numpy as np
from _optional import torch


def np_normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_info_nce(a, p, n=None, *, temperature=0.05, similarity="cosine"):
    a, p = np.asarray(a, np.float64), np.asarray(p, np.float64)
    cands = p if n is None else np.concatenate([p, np.asarray(n, np.float64)], 0)
    if similarity == "cosine":
        a, cands = np_normalize(a), np_normalize(cands)
    logits = a @ cands.T / temperature
    rows = np.arange(len(a))
    margins = logits - logits[rows, rows][:, None]  # z_ij - z_ii
    margins[rows, rows] = -np.inf
    m = margins.max(1)
    others = m + np.log(np.exp(margins - m[:, None]).sum(1))  # log sum_{j != i} e^{z_ij - z_ii}
    return float(
        np.mean(np.logaddexp(0.0, others))
    )  # log(1 + sum_{j != i} ...), exact for tiny losses


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


def torch_info_nce(a, p, n=None, *, temperature=0.05, similarity="cosine"):
    cands = p if n is None else torch.cat([p, n], 0)
    if similarity == "cosine":
        a, cands = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(
            cands, dim=-1
        )
    logits = a @ cands.T / temperature
    return torch.nn.functional.cross_entropy(logits, torch.arange(a.shape[0]))


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
