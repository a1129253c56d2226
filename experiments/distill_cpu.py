"""DSE distillation on CPU: all-MiniLM-L6-v2 teaches its own first layers on pair scores.

    .venv/bin/python -m experiments.distill_cpu --workdir /tmp/distill           # the default run
    .venv/bin/python -m experiments.distill_cpu --steps 2 --max-pairs 64 \\
        --tasks STSBenchmark --workdir /tmp/distill_smoke                        # smoke run

Steps:

1. Teacher: all-MiniLM-L6-v2 as its sentence-transformers folder sets it up
   (mean pooling, L2-normalised). Student: the teacher's embeddings and first
   ``--student-layers`` (3) transformer layers -- the params pytree cut to
   ``layer_0 .. layer_{k-1}`` and the config's ``num_hidden_layers`` set to k --
   saved with ``Encoder.save_pretrained`` to ``WORKDIR/student_init``.
2. Pair scores: the teacher's cosine similarity of each pair of ``--pairs``
   (default the STS Benchmark *train* split of the original release, 5,749
   pairs; a SentEval SNLI folder also works), written to
   ``WORKDIR/teacher_pairs.jsonl`` as ``{"sent0", "sent1", "teacher"}``. The gold
   labels are not used: the student learns from the teacher only.
3. Training: ``jaxembed.train`` with ``objective="dse"`` (Barkan et al. 2020):
   the shared student encodes both sentences (mean pooling), the pair head
   ``[u, v, u*v, |u-v|] -> FC 512 -> ReLU -> FC 1`` predicts the teacher's score,
   loss ``alpha * MSE(head, teacher)`` with alpha = 1 (``dse_task_loss="none"``:
   no task label). AdamW, warm-up 10 %, weight decay 0.01 (the DSE settings).
4. Evaluation of teacher, untrained student and trained student on ``--tasks``
   (``evaluate_sts``: cosine of the embeddings, not the pair head, Spearman x 100,
   "all" aggregation, test splits), each as one JSON line.
5. Speed: the same ``--speed-sentences`` STS sentences encoded by teacher and
   student in turn (interleaved, ``--speed-repeats`` rounds after one warm-up
   each, same batch size and max length); median sentences/s and their ratio.

The JSON lines go to stdout and ``WORKDIR/results.jsonl``; a markdown table to
stdout and ``WORKDIR/table.md``.

Budget (default run), measured on the shared 2-core machine (Intel Xeon @
2.80GHz, load average 5-8, our processes getting ~0.5 core, so ~3x slower
than idle): the teacher encodes ~100 sentences/s and the 3-layer student ~200;
a DSE step of 32 pairs at max length 64 with the 3-layer student takes 5-6 s
(first step incl. compilation 30 s). Idle estimate (/3): teacher scoring of
the 5,749 train pairs (~11,000 unique sentences) ~40 s; training 180 steps
(one epoch of STS-B train) x ~2 s = ~6 min; three seven-task evaluations
(28,530 unique sentences each; teacher ~95 s, student ~50 s) ~3.5 min; speed
test (2,000 sentences, warm-up + 3 rounds each) ~1 min. Total about 12 min.

References:
    Barkan et al., "Scalable Attentive Sentence-Pair Modeling via Distilled
    Sentence Embedding", AAAI 2020, arXiv 1908.05161.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import shutil
import statistics
import sys
import time

from experiments._sts_study import (
    ALL_TASKS,
    REPO,
    SHORT,
    add_eval_arguments,
    add_model_argument,
    csv_list,
    evaluate_encoder,
    log,
)

DEFAULT_PAIRS = REPO.parent / "shared" / "data" / "sts_raw" / "STSBenchmark" / "sts-train.csv"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_argument(p, "teacher folder; default the bundled all-MiniLM-L6-v2")
    p.add_argument("--student-layers", type=int, default=3, help="first k layers of the teacher")
    p.add_argument(
        "--pairs",
        default=str(DEFAULT_PAIRS),
        help="STS-B-format csv, or a SentEval SNLI folder (s1.dev, s2.dev, s1.test, ...)",
    )
    p.add_argument("--max-pairs", type=int, default=0, help="use the first N pairs; 0: all")
    p.add_argument("--steps", type=int, default=180, help="default: one epoch of STS-B train")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per step")
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--max-length", type=int, default=64, help="training max tokens")
    p.add_argument("--dse-hidden", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    add_eval_arguments(
        p, max_length_help="max tokens at evaluation and in the speed test; 0: the teacher's (256)"
    )
    p.add_argument("--speed-sentences", type=int, default=2000)
    p.add_argument("--speed-repeats", type=int, default=3)
    p.add_argument("--workdir", default="/tmp/jaxembed_distill")
    return p


def read_pairs(path, *, max_pairs: int = 0) -> tuple[list[str], list[str]]:
    """Sentence pairs from an STS-B csv (columns 6-7) or a SentEval SNLI folder (``s1/s2.*``)."""
    path = pathlib.Path(path)
    if path.is_dir():
        s1, s2 = [], []
        for split in ("train", "dev", "test"):
            a, b = path / f"s1.{split}", path / f"s2.{split}"
            if a.exists() and b.exists():
                la = a.read_text(encoding="utf-8").splitlines()
                lb = b.read_text(encoding="utf-8").splitlines()
                if len(la) != len(lb):
                    raise ValueError(f"{a} has {len(la)} lines but {b} has {len(lb)}")
                s1 += la
                s2 += lb
        if not s1:
            raise ValueError(f"{path} holds no s1.<split>/s2.<split> files")
    else:
        from jaxembed.eval.sts import read_stsb

        s1, s2, _gold = read_stsb(path)
    keep = [i for i in range(len(s1)) if s1[i].strip() and s2[i].strip()]
    if max_pairs > 0:
        keep = keep[:max_pairs]
    return [s1[i] for i in keep], [s2[i] for i in keep]


def truncate_encoder(enc, layers: int):
    """``enc`` with only its embeddings, first ``layers`` transformer layers and pooler."""
    from jaxembed.models.transformer import TransformerEncoder

    total = enc.config.num_hidden_layers
    if not 1 <= layers <= total:
        raise ValueError(f"student layers must be in [1, {total}], got {layers}")
    config = dataclasses.replace(enc.config, num_hidden_layers=layers)
    drop = {f"layer_{i}" for i in range(layers, total)}
    params = {k: v for k, v in enc.params.items() if k not in drop}
    module = TransformerEncoder(config, dtype=enc.module.dtype, param_dtype=enc.module.param_dtype)
    return enc.replace(module=module, params=params)


def teacher_scores(teacher, s1, s2, *, batch_size: int) -> list[float]:
    """Cosine of the teacher's embeddings of each pair (float64 dot of unit rows)."""
    import numpy as np

    index = {}
    for s in (*s1, *s2):
        index.setdefault(s, len(index))
    emb = teacher.encode(list(index), batch_size=batch_size).astype(np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    a = emb[[index[s] for s in s1]]
    b = emb[[index[s] for s in s2]]
    return [float(x) for x in np.sum(a * b, axis=1)]


def speed_sentences(args) -> list[str]:
    """The first ``--speed-sentences`` distinct sentences of the evaluated tasks."""
    from jaxembed.eval.datasets import load_sts_task

    seen = {}
    for task in args.tasks:
        for sub in load_sts_task(args.sts_dir, task):
            for s in (*sub.s1, *sub.s2):
                seen.setdefault(s, None)
    return list(seen)[: args.speed_sentences]


def measure_speed(encoders: dict, sentences: list[str], *, batch_size: int, repeats: int) -> dict:
    """Median sentences/s of each encoder on the same sentences, rounds interleaved."""
    from benchmarks.harness import interleave

    calls = {name: (lambda enc=enc: enc.encode(sentences, batch_size=batch_size))
             for name, enc in encoders.items()}
    times = interleave(calls, repeats=repeats, warmup=1)  # warm-up: compiles every bucket shape
    return {name: len(sentences) / statistics.median(ts) for name, ts in times.items()}


def _count(params) -> int:
    import jax
    import numpy as np

    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))


def markdown_table(rows: list[dict], speed: dict, tasks) -> str:
    cols = [*tasks, "Avg"]
    lines = [
        "| model | layers | params | "
        + " | ".join(SHORT.get(t, t) for t in cols)
        + " | sentences/s | speed-up |",
        "|" + "---|" * (len(cols) + 5),
    ]
    for r in rows:
        sps = speed.get(r["model"])
        base = speed.get("teacher")
        lines.append(
            f"| {r['model']} | {r['layers']} | {r['params'] / 1e6:.1f} M | "
            + " | ".join(f"{r['scores'][c]:.2f}" for c in cols)
            + (f" | {sps:.0f} | {sps / base:.2f}x |" if sps and base else " | | |")
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.tasks = csv_list(args.tasks)
    bad = [t for t in args.tasks if t not in ALL_TASKS]
    if bad or not args.tasks:
        raise ValueError(
            f"unknown or no tasks {bad or args.tasks}; expected a subset of {ALL_TASKS}"
        )
    if args.steps < 1 or args.batch_size < 1:
        raise ValueError(
            f"--steps and --batch-size must be >= 1, got {args.steps}, {args.batch_size}"
        )

    from jaxembed.models.encoder import Encoder
    from jaxembed.models.hub import resolve
    from jaxembed.train.config import TrainConfig
    from jaxembed.train.trainer import train

    workdir = pathlib.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    teacher_path = resolve(args.model)
    teacher = Encoder.from_pretrained(
        teacher_path, pooling="mean", normalize=True, max_length=args.eval_max_length or None
    )
    args.eval_max_length = teacher.max_length
    student_init = truncate_encoder(teacher, args.student_layers)
    student_init.save_pretrained(workdir / "student_init")

    s1, s2 = read_pairs(args.pairs, max_pairs=args.max_pairs)
    t0 = time.perf_counter()
    scores = teacher_scores(teacher, s1, s2, batch_size=args.eval_batch_size)
    pairs_path = workdir / "teacher_pairs.jsonl"
    with open(pairs_path, "w") as f:
        for a, b, y in zip(s1, s2, scores):
            f.write(json.dumps({"sent0": a, "sent1": b, "teacher": y}) + "\n")
    log(f"teacher scored {len(s1)} pairs in {time.perf_counter() - t0:.1f} s -> {pairs_path}")

    cfg = TrainConfig(
        model=str(workdir / "student_init"),
        objective="dse",
        train_pooling="mean",
        eval_pooling="mean",
        normalize=True,
        dse_alpha=1.0,
        dse_task_loss="none",
        dse_hidden=args.dse_hidden,
        dse_out=1,
        data=str(pairs_path),
        data_format="pairs_jsonl",
        max_length=args.max_length,
        batch_size=args.batch_size,
        steps=args.steps,
        learning_rate=args.learning_rate,
        warmup_ratio=0.1,
        weight_decay=0.01,
        eval_every=0,
        save_every=args.steps,
        keep=1,
        seed=args.seed,
        progress=False,
    )
    shutil.rmtree(workdir / "train", ignore_errors=True)  # never resume another run's checkpoint
    t0 = time.perf_counter()
    summary = train(cfg, workdir / "train", echo=log)
    train_s = time.perf_counter() - t0
    student = Encoder.from_pretrained(
        workdir / "train" / "export",
        pooling="mean",
        normalize=True,
        max_length=args.eval_max_length,
    )
    metrics = [
        json.loads(x) for x in (workdir / "train" / "metrics.jsonl").read_text().splitlines() if x
    ]
    losses = [m["loss"] for m in metrics if "loss" in m]

    rows = []
    out = open(workdir / "results.jsonl", "w")

    def emit(row: dict) -> None:
        line = json.dumps(row)
        print(line, flush=True)
        out.write(line + "\n")
        out.flush()

    for name, enc in (("teacher", teacher), ("student_init", student_init), ("student", student)):
        sc, eval_s = evaluate_encoder(enc, args)
        row = {
            "model": name,
            "layers": enc.config.num_hidden_layers,
            "params": _count(enc.params),
            "scores": sc,
            "eval_s": eval_s,
            "tasks": list(args.tasks),
        }
        if name == "student":
            row.update(
                steps=int(summary["steps"]),
                batch_size=args.batch_size,
                learning_rate=args.learning_rate,
                train_s=train_s,
                pairs=len(s1),
                first_loss=float(losses[0]) if losses else None,
                final_loss=float(losses[-1]) if losses else None,
            )
        rows.append(row)
        emit(row)

    sentences = speed_sentences(args)
    speed = measure_speed(
        {"teacher": teacher, "student": student},
        sentences,
        batch_size=args.eval_batch_size,
        repeats=args.speed_repeats,
    )
    speed["student_init"] = speed["student"]  # same architecture and shapes
    emit(
        {
            "speed": True,
            "teacher_sent_per_s": speed["teacher"],
            "student_sent_per_s": speed["student"],
            "speedup": speed["student"] / speed["teacher"],
            "sentences": len(sentences),
            "repeats": args.speed_repeats,
            "batch_size": args.eval_batch_size,
            "max_length": args.eval_max_length,
        }
    )
    out.close()
    table = markdown_table(rows, speed, args.tasks)
    (workdir / "table.md").write_text(table + "\n")
    print(table, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
