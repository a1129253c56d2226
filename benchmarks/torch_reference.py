"""PyTorch references for the throughput benchmarks: the losses and a whole train step.

The same work as jaxembed's objectives, written the way the official code
writes it: ``transformers.BertModel`` (SDPA attention, no pooler) -> raw [CLS]
-> (WhitenedCSE: per-view channel shuffle, group covariances ``XᵀX / n``,
``torch.linalg.eigh``, ZCA ``U diag(λ^-½) Uᵀ`` with the covariance detached,
un-shuffle) -> Linear+tanh -> cosine/τ cross-entropy; AdamW, global-norm
clipping. On CUDA it runs under ``torch.autocast(bfloat16)`` (AMP), the
whitening and logits in float32 as in the official code.

Two deliberate differences from the official WhitenedCSE code, both in the
reference's favour: ``eigh`` runs on the accelerator (the official code moves
the covariances to the CPU), and an ``eps`` is added to the eigenvalues when
the benchmark asks for one (it uses the same ``eps`` on both sides).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _float32_island(fn):
    """Run ``fn`` with autocast off (its own ``.float()`` casts then stick)."""
    def wrapped(x, *args, **kwargs):
        with torch.autocast(x.device.type, enabled=False):
            return fn(x, *args, **kwargs)
    return wrapped


@_float32_island
def info_nce(a: torch.Tensor, p: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """SimCSE's loss: cross-entropy over the cosine matrix / ``temperature``."""
    logits = F.normalize(a.float(), dim=-1) @ F.normalize(p.float(), dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))


@_float32_island
def shuffled_group_whitening(x: torch.Tensor, num_groups: int, eps: float = 0.0,
                             linalg_device: str | None = None) -> torch.Tensor:
    """Official SGW: shuffle, group, centre, detached eigh-ZCA, un-shuffle. ``linalg_device``
    runs the decomposition there (the official code: ``'cpu'``, even when training on a GPU)."""
    n, d = x.shape
    perm = torch.randperm(d, device=x.device)
    xs = x.float()[:, perm].reshape(n, num_groups, d // num_groups).transpose(0, 1)  # [G, n, c]
    xc = xs - xs.mean(dim=1, keepdim=True)
    cov = (xc.transpose(1, 2) @ xc / n).detach()                                      # [G, c, c]
    lam, u = torch.linalg.eigh(cov if linalg_device is None else cov.to(linalg_device))
    w = (u @ torch.diag_embed((lam + eps).rsqrt()) @ u.transpose(1, 2)).to(x.device)
    out = (xc @ w).transpose(0, 1).reshape(n, d)
    return out[:, torch.argsort(perm)]


class TorchStep:
    """``step(input_ids, attention_mask)`` -> loss (float); one optimiser update."""

    def __init__(self, model, *, objective: str, num_views: int = 3, num_groups: int = 128,
                 temperature: float = 0.05, eps: float = 0.0, lr: float = 1e-5,
                 max_grad_norm: float = 1.0, amp: bool = False):
        self.model, self.objective, self.amp = model, objective, amp
        device = next(model.parameters()).device
        hidden = model.config.hidden_size
        self.mlp = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.Tanh()).to(device)
        self.views = num_views if objective == "whitenedcse" else 2
        self.num_groups, self.temperature, self.eps = num_groups, temperature, eps
        self.max_grad_norm = max_grad_norm
        params = list(model.parameters()) + list(self.mlp.parameters())
        fused = device.type == "cuda"
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=fused)
        self.params = params
        self.device = device
        model.train()

    def _loss(self, ids, mask):
        b = ids.shape[0]
        ids = ids.repeat_interleave(self.views, dim=0)
        mask = mask.repeat_interleave(self.views, dim=0)
        cls = self.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        views = cls.reshape(b, self.views, -1)
        if self.objective == "whitenedcse":
            z = [self.mlp(shuffled_group_whitening(views[:, k], self.num_groups, self.eps))
                 for k in range(self.views)]
            return sum(info_nce(z[0], z[k], self.temperature) for k in range(1, self.views))
        z = self.mlp(views)
        return info_nce(z[:, 0], z[:, 1], self.temperature)

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss = self._loss(ids, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()
