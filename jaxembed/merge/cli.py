"""``jaxembed merge``: merge model folders of one architecture into a new folder.

    jaxembed merge --method {task_arithmetic,linear,slerp,ties,dare,self_positioning}
        --base DIR --models DIR [DIR ...] --out DIR [--weights W ...]
        [--density D] [--scale S] [--drop-rate P] [--seed N]
        [--probe FILE.jsonl --steps N --lr LR --init L ... --per-layer
         --regularization R --temperature T --batch-size B --max-length L]
        [--json]

Every folder is loaded with ``Encoder.from_pretrained`` (float32 parameters);
all must have the base's config (``EncoderConfig``), parameter tree and
tokenizer vocabulary. The output is written with ``save_pretrained`` from the
base (its tokenizer, pooling and normalisation), so ``transformers`` and
``sentence-transformers`` load it. ``τᵢ = θᵢ − θ₀`` below is model ``i`` minus the base.

Methods (``N`` = number of ``--models``):

* ``task_arithmetic``: ``θ₀ + Σ wᵢ τᵢ``; ``--weights`` default ``1/N`` each.
* ``linear``: ``Σ wᵢ θᵢ / Σ wᵢ`` over ``--models`` (a model soup; the base is
  only the template); ``--weights`` default uniform.
* ``slerp``: ``slerp(θ₀, θ₁, t)`` per tensor, exactly one ``--models``;
  ``--weights t`` (default 0.5).
* ``ties``: trim to ``--density`` (0.2), elect signs, disjoint mean,
  ``θ₀ + --scale · τ_m``; ``--weights`` default 1 each.
* ``dare``: drop ``--drop-rate`` (0.9) of every ``τᵢ`` and rescale (``--seed``),
  then task arithmetic with ``--weights`` (default ``1/N``).
* ``self_positioning``: fit ``λ`` of ``θ₀ + Σ λᵢ τᵢ`` on the task-balanced
  InfoNCE of ``--probe`` (format: :mod:`jaxembed.merge.probe`) with Adam,
  ``--steps`` updates at ``--lr``, from ``--init`` (default ``1/N``), one ``λ``
  per task or, with ``--per-layer``, per task and layer.

With ``--json`` the last stdout line is one JSON object: ``method``, ``out``,
``models``, ``weights`` (or ``lambdas``, ``groups``, ``history``,
``final_loss`` for ``self_positioning``).
"""

from __future__ import annotations

import argparse
import json
import sys

METHODS = ("task_arithmetic", "linear", "slerp", "ties", "dare", "self_positioning")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--base", required=True, metavar="DIR", help="base model folder (θ₀)")
    parser.add_argument("--models", required=True, nargs="+", metavar="DIR",
                        help="model folders to merge (same architecture as --base)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--weights", type=float, nargs="+", metavar="W",
                        help="one weight per model (slerp: the single t)")
    parser.add_argument("--density", type=float, default=0.2,
                        help="ties: fraction of each tensor kept (default 0.2)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="ties: factor on the merged task vector (default 1)")
    parser.add_argument("--drop-rate", type=float, default=0.9,
                        help="dare: drop probability (default 0.9)")
    parser.add_argument("--seed", type=int, default=0, help="dare masks, probe sampling")
    sp = parser.add_argument_group("self_positioning")
    sp.add_argument("--probe", metavar="FILE.jsonl", help="probe pairs (see jaxembed.merge.probe)")
    sp.add_argument("--steps", type=int, default=100)
    sp.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (default 0.01)")
    sp.add_argument("--init", type=float, nargs="+", metavar="L",
                    help="initial lambda: one number or one per model (default 1/N)")
    sp.add_argument("--per-layer", action="store_true",
                    help="one lambda per task and layer instead of per task")
    sp.add_argument("--regularization", type=float, default=0.0,
                    help="weight of ||lambda - init||^2 (default 0)")
    sp.add_argument("--temperature", type=float, default=0.05, help="InfoNCE temperature")
    sp.add_argument("--batch-size", type=int, default=32,
                    help="probe pairs per task per step (default 32)")
    sp.add_argument("--max-length", type=int, default=128, help="probe tokens per text")
    sp.add_argument("--log-every", type=int, default=10, help="print progress every N steps")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON line with the result last")


def _check_options(args) -> None:
    n = len(args.models)
    if args.method == "slerp":
        if n != 1:
            raise ValueError(f"slerp merges --base with exactly one --models folder, got {n}")
        if args.weights is not None and len(args.weights) != 1:
            raise ValueError(f"slerp takes one --weights value (t), got {len(args.weights)}")
    elif args.weights is not None and len(args.weights) != n:
        raise ValueError(f"--weights needs one number per --models folder ({n}), "
                         f"got {len(args.weights)}")
    if args.method == "self_positioning":
        if args.probe is None:
            raise ValueError("self_positioning needs --probe FILE.jsonl")
        if args.weights is not None:
            raise ValueError("self_positioning learns the weights; use --init to start elsewhere")
        if args.init is not None and len(args.init) not in (1, n):
            raise ValueError(f"--init needs 1 or {n} numbers, got {len(args.init)}")
    elif args.probe is not None:
        raise ValueError(f"--probe is only used by self_positioning, not {args.method}")


def _check_same_architecture(base, enc, name: str) -> None:
    import dataclasses

    from jaxembed.merge._tree import check_like

    a, b = dataclasses.asdict(base.config), dataclasses.asdict(enc.config)
    diff = [f"{k} {b[k]!r} vs {a[k]!r}" for k in a if a[k] != b[k]]
    if diff:
        raise ValueError(f"{name}: config differs from --base: " + ", ".join(diff))
    check_like(base.params, "--base", enc.params, name, same_dtype=True)
    if base.tokenizer is not None and enc.tokenizer is not None:
        if base.tokenizer.get_vocab() != enc.tokenizer.get_vocab():
            raise ValueError(f"{name}: tokenizer vocabulary differs from --base")
    settings = ("pooling", "normalize")
    if any(getattr(base, s) != getattr(enc, s) for s in settings):
        print(f"note: {name} has pooling={enc.pooling!r}, normalize={enc.normalize}; "
              f"the output keeps --base's ({base.pooling!r}, {base.normalize})")


def _self_positioning(args, base, vectors) -> dict:
    import numpy as np

    from jaxembed.merge.positioning import self_positioning
    from jaxembed.merge.probe import describe, probe_batches, probe_loss, read_probe

    probe = read_probe(args.probe)
    print(describe(probe, args.batch_size))
    batches = probe_batches(
        probe,
        lambda texts: base.tokenize(texts, max_length=min(args.max_length, base.max_length)),
        batch_size=args.batch_size,
        seed=args.seed,
    )
    every = max(1, args.log_every)

    def progress(step, loss, lam):
        if step % every == 0 or step == args.steps - 1:
            shown = np.array2string(lam.mean(axis=0) if lam.ndim == 2 else lam, precision=4)
            label = "lambda (mean over layers)" if lam.ndim == 2 else "lambda"
            print(f"step {step + 1}/{args.steps}  probe loss {loss:.5f}  {label} {shown}",
                  flush=True)

    init = None if args.init is None else np.asarray(args.init)
    result = self_positioning(
        probe_loss(base.embed, temperature=args.temperature),
        base.params,
        vectors,
        steps=args.steps,
        lr=args.lr,
        init=init[0] if init is not None and init.size == 1 else init,
        per_layer=args.per_layer,
        regularization=args.regularization,
        batches=batches,
        callback=progress,
    )
    lam = np.asarray(result.lambdas)
    print(f"final probe loss {result.final_loss:.5f}")
    rows = zip(result.groups, lam) if lam.ndim == 2 else [("all", lam)]
    for group, row in rows:
        print(f"lambda[{group}] = {np.array2string(row, precision=4)}")
    return {
        "params": result.params,
        "lambdas": lam.tolist(),
        "groups": list(result.groups),
        "history": result.history.tolist(),
        "final_loss": result.final_loss,
    }


def _merge(args, base, models) -> dict:
    import jax

    from jaxembed import merge

    n = len(models)
    params = [m.params for m in models]
    w = None if args.weights is None else list(args.weights)
    if args.method == "linear":
        w = w or [1.0 / n] * n
        return {"params": merge.linear(params, w), "weights": w}
    if args.method == "slerp":
        t = w[0] if w else 0.5
        return {"params": merge.slerp(base.params, params[0], t), "weights": [t]}
    vectors = merge.task_vectors(base.params, params)
    if args.method == "self_positioning":
        return _self_positioning(args, base, vectors)
    if args.method == "ties":
        w = w or [1.0] * n
        merged = merge.ties(base.params, vectors, density=args.density, weights=w,
                            scale=args.scale)
        return {"params": merged, "weights": w}
    w = w or [1.0 / n] * n
    if args.method == "dare":
        vectors = merge.dare(vectors, drop_rate=args.drop_rate,
                             key=jax.random.key(args.seed))
    return {"params": merge.task_arithmetic(base.params, vectors, w), "weights": w}


def run(args: argparse.Namespace) -> int:
    try:
        _check_options(args)
        from jaxembed.models.encoder import Encoder

        base = Encoder.from_pretrained(args.base)
        models = [Encoder.from_pretrained(m) for m in args.models]
        for path, enc in zip(args.models, models):
            _check_same_architecture(base, enc, f"--models {path}")
        print(f"{args.method}: base {args.base} + {len(models)} models "
              f"({base.config.model_type}, {base.config.num_hidden_layers} layers, "
              f"hidden {base.config.hidden_size})")
        result = _merge(args, base, models)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    params = result.pop("params")
    base.save_pretrained(args.out, params=params)
    print(f"wrote {args.out}")
    if "weights" in result:
        print(f"weights {result['weights']}")
    if args.json:
        print(json.dumps({"method": args.method, "out": str(args.out),
                          "models": list(args.models), **result}))
    return 0
