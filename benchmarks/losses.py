"""Forward+backward time of info_nce and shuffled_group_whitening: jaxembed vs PyTorch.

The PyTorch side is the algorithm as the official code writes it (SimCSE:
cosine matrix / tau + cross_entropy; WhitenedCSE: ``randperm`` channel
shuffle, per-group covariance ``XᵀX / N`` detached, ``torch.linalg.eigh``,
``W = U diag(λ^-1/2) Uᵀ``, ``bmm``, un-shuffle), eager. Both run in the same
process, interleaved call by call; we report the median and the minimum of the
repeats (on a shared machine the minimum is the less load-sensitive one) and
the speed-up by both. One JSON line per case. The PyTorch functions are
:mod:`benchmarks.torch_reference`'s (the same the train-step benchmark uses).

With a CUDA torch and ``--torch-device cuda`` the PyTorch side runs on the GPU
with the decomposition forced onto the CPU as the official code does
(``linalg_device='cpu'``); ``torch_gpu_eigh_ms`` then also times eigh on the GPU.

    python -m benchmarks.losses [--quick] [--repeats N] [--torch-device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial

import numpy as np

from benchmarks.harness import emit, interleave, machine


def _time_steps(steps, repeats):
    """Interleaved timing of zero-argument steps after one warm-up (and compile) round:
    ``{name: (median_ms, min_ms)}``."""
    times = interleave(steps, repeats=repeats, warmup=1)
    return {name: (statistics.median(t) * 1e3, min(t) * 1e3) for name, t in times.items()}


def _record(fields, timings, ref="torch"):
    out = dict(fields)
    for name, (med, low) in timings.items():
        out[f"{name}_ms"] = round(med, 3)
        out[f"{name}_min_ms"] = round(low, 3)
    ref_med, ref_min = timings[ref]
    out["speedup_median"] = round(ref_med / timings["jax"][0], 2)
    out["speedup_min"] = round(ref_min / timings["jax"][1], 2)
    emit(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B in {64, 128} only")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--torch-device", default="cpu")
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import torch

    from benchmarks.torch_reference import info_nce as torch_info_nce
    from benchmarks.torch_reference import shuffled_group_whitening as torch_sgw_fn
    from jaxembed.losses import info_nce, shuffled_group_whitening

    d = 768
    batches = (64, 128) if args.quick else (64, 128, 512, 4096)
    rng = np.random.default_rng(0)
    emit({"bench": "losses", **machine()})
    mix = np.eye(d) + rng.standard_normal((d, d)) / np.sqrt(d)
    for b in batches:
        repeats = args.repeats or (15 if b <= 128 else 6 if b <= 512 else 3)
        x = (rng.standard_normal((b, d)) @ mix).astype(np.float32)
        p = (x + 0.5 * rng.standard_normal((b, d))).astype(np.float32)
        r = rng.standard_normal((b, d)).astype(np.float32)
        xj, pj, rj = jnp.asarray(x), jnp.asarray(p), jnp.asarray(r)

        dev = torch.device(args.torch_device)
        sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
        x_t0, p_t0, r_t = (torch.tensor(v, device=dev) for v in (x, p, r))

        # info_nce: gradient w.r.t. both inputs.
        jax_vg = jax.jit(jax.value_and_grad(lambda a, p: info_nce(a, p), argnums=(0, 1)))

        def jax_nce():
            jax.block_until_ready(jax_vg(xj, pj))

        def torch_nce():
            a_t = x_t0.clone().requires_grad_(True)
            p_t = p_t0.clone().requires_grad_(True)
            torch_info_nce(a_t, p_t).backward()
            sync()

        _record(
            {"bench": "losses", "fn": "info_nce", "B": b, "D": d},
            _time_steps({"jax": jax_nce, "torch": torch_nce}, repeats),
        )

        for groups in (128, 4):

            def torch_sgw(linalg_device=("cpu" if dev.type == "cuda" else None), groups=groups):
                x_t = x_t0.clone().requires_grad_(True)
                out = torch_sgw_fn(x_t, groups, linalg_device=linalg_device)
                (out * r_t).sum().backward()
                sync()

            steps = {"torch": torch_sgw}
            if dev.type == "cuda":
                steps["torch_gpu_eigh"] = partial(torch_sgw, linalg_device=None)
            for method in ("eigh", "cholesky", "newton_schulz"):
                eps = 0.0 if method != "cholesky" else 1e-6
                grad_fn = jax.jit(
                    jax.value_and_grad(
                        lambda x, key, groups=groups, method=method, eps=eps: jnp.sum(
                            rj
                            * shuffled_group_whitening(
                                x, key, num_groups=groups, method=method, eps=eps
                            )
                        )
                    )
                )
                keys = iter(jax.random.split(jax.random.key(b), repeats + 1))

                def jax_sgw(grad_fn=grad_fn, keys=keys):
                    jax.block_until_ready(grad_fn(xj, next(keys)))

                steps[method] = jax_sgw
            timings = _time_steps(steps, repeats)  # the three jax methods and torch, interleaved
            torch_timings = {k: v for k, v in timings.items() if k.startswith("torch")}
            for method in ("eigh", "cholesky", "newton_schulz"):
                _record(
                    {
                        "bench": "losses",
                        "fn": "shuffled_group_whitening",
                        "method": method,
                        "B": b,
                        "D": d,
                        "groups": groups,
                    },
                    {"jax": timings[method], **torch_timings},
                )

    # Accuracy of the approximate / rotated methods (B = 512, correlated data): deviation of each
    # group's output covariance from I, and distance of the output from the eigh (ZCA) output.
    from jaxembed.losses import group_whitening

    x = jnp.asarray((rng.standard_normal((512, d)) @ mix).astype(np.float32))
    ref = np.asarray(group_whitening(x, num_groups=128), np.float64)
    for method, kw in (
        ("eigh", {}),
        ("cholesky", {}),
        ("newton_schulz", {"iterations": 5}),
        ("newton_schulz", {"iterations": 10}),
    ):
        z = np.asarray(group_whitening(x, num_groups=128, method=method, **kw), np.float64)
        zg = z.reshape(512, 128, 6)
        zc = zg - zg.mean(0)
        cov = np.einsum("bgi,bgj->gij", zc, zc) / 512
        emit(
            {
                "bench": "losses",
                "accuracy": method,
                **kw,
                "groups": 128,
                "B": 512,
                "max_abs_cov_minus_I": float(np.abs(cov - np.eye(6)).max()),
                "rel_dist_to_zca": float(np.abs(z - ref).max() / np.abs(ref).max()),
            }
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
