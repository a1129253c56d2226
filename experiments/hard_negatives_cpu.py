"""Hard negatives + false-negative masking vs in-batch negatives only, on the tiny recipe (CPU).

    .venv/bin/python -m experiments.hard_negatives_cpu --workdir /tmp/hn      # the study (~10 min)
    .venv/bin/python -m experiments.hard_negatives_cpu --steps 2 --seeds 1 \\
        --tasks STSBenchmark --max-triplets 64 --workdir /tmp/hn_smoke       # smoke run

What it runs (issue #17.7). The recipe is ``configs/qwen3_embedding_style.py:tiny``
(``tiny-random-qwen3``: a random 2-layer Qwen3, hidden 32, MiniLM's WordPiece
vocabulary; last-token pooling, normalised, instruction-prefixed queries, tau 0.02,
query-query and document-document in-batch negatives, duplicate-document masking,
Matryoshka dims 32/16/8), trained on SNLI triplets built from
``../shared/data/corpora/snli_senteval`` (dev and test: premise -> query,
entailment -> positive, contradiction -> the hard negative; 5,883 rows). For every
seed in ``0 .. --seeds-1`` (the seed draws the random initial model and the data
order, so both arms of a seed start from the same weights and see the same rows):

* ``untrained``: the random initial model of that seed;
* ``hard_negatives``: the recipe as it is -- one hard negative per row and
  false-negative masking (negatives scoring above the positive + 0.1 dropped);
* ``in_batch``: the same with no hard negative (``num_negatives=0``) and no masking,
  so the denominator holds the batch's other documents and queries only.

Same steps, batch, learning rate and schedule for both arms. Each model is
evaluated with ``jaxembed.eval.sts.evaluate_sts`` ("all" aggregation, test splits,
cosine, Spearman x 100; no instruction on STS sentences) on ``--tasks`` (all seven
by default) at the last step. One JSON line per (arm, seed) to stdout and
``WORKDIR/results.jsonl``; at the end a markdown table of mean +- sample std over
seeds, and per trained arm the paired difference (hard_negatives - in_batch, per
seed) with its std, to ``WORKDIR/table.md``.

Settings and why: the recipe's learning rate (2e-5) is for a pretrained 0.6B model;
a random hidden-32 model learns nothing measurable at it in a few hundred steps, so
this study uses 1e-3 (a usual rate for small transformers trained from scratch),
batch 64 rows (x 3 texts), max length 64 (the instruction prefix alone is ~20
tokens) and 200 steps (12,800 rows, ~2.2 epochs): about 1 minute of training and 1
of evaluation per run on 2 shared cores.

What it cannot show: anything about a pretrained 0.6B-8B model. The tiny model is
random and learns lexical overlap first; the two arms differ in how many negatives a
query sees, not only in their difficulty: with the batch's B rows, ``hard_negatives``
adds every row's hard negative (B more documents, in the query-document and the
document-document terms) to the B - 1 other positives and B - 1 other queries that
both arms have.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import statistics
import time

from experiments._sts_study import REPO, add_eval_arguments, csv_list, evaluate_encoder, log

RECIPE = REPO / "configs" / "qwen3_embedding_style.py"
DEFAULT_SNLI = REPO.parent / "shared" / "data" / "corpora" / "snli_senteval"
ARMS = ("untrained", "hard_negatives", "in_batch")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="training steps per trained run")
    p.add_argument("--batch-size", type=int, default=64, help="rows (query, positive[, neg])")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--max-length", type=int, default=64, help="training max tokens")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    p.add_argument("--snli-dir", default=str(DEFAULT_SNLI), help="SentEval-format SNLI folder")
    p.add_argument("--max-triplets", type=int, default=0, help="use the first N rows (0: all)")
    add_eval_arguments(p, max_length_help="max tokens at evaluation; 0: the training max")
    p.add_argument("--workdir", default="/tmp/jaxembed_hard_negatives")
    return p


def write_triplets(snli_dir, path: pathlib.Path, *, limit: int = 0) -> int:
    """SNLI dev + test triplets as retrieval JSONL ``{query, positive, negatives: [neg]}``."""
    from jaxembed.data.sources import snli_triplets

    rows = [r for split in ("dev", "test") for r in snli_triplets(snli_dir, split).rows]
    rows = rows[:limit] if limit else rows
    path.write_text("".join(json.dumps({"query": q, "positive": p, "negatives": [n]}) + "\n"
                            for q, p, n in rows))
    return len(rows)


def train_config(args, arm: str, seed: int, data: pathlib.Path):
    """The tiny recipe with this study's settings; ``in_batch`` drops the hard negative and
    the masking, nothing else."""
    from jaxembed.train.config import load_config

    cfg = load_config(f"{RECIPE}:tiny").replace(
        data=str(data), steps=args.steps, batch_size=args.batch_size,
        learning_rate=args.learning_rate, max_length=args.max_length, seed=seed,
        eval_every=0, eval_before=False, save_every=args.steps, keep=1, progress=False)
    if arm == "in_batch":
        cfg = cfg.replace(num_negatives=0, false_negative_margin=None)
    return cfg


def run_one(args, arm: str, seed: int, data: pathlib.Path) -> dict:
    """Train (unless ``untrained``) and evaluate one (arm, seed); its result row."""
    from jaxembed.models.encoder import Encoder
    from jaxembed.train.trainer import load_encoder, train

    cfg = train_config(args, "hard_negatives" if arm == "untrained" else arm, seed, data)
    eval_len = args.eval_max_length or args.max_length
    row = {"arm": arm, "seed": seed, "steps": 0 if arm == "untrained" else args.steps,
           "batch_size": args.batch_size, "learning_rate": args.learning_rate,
           "max_length": args.max_length, "eval_max_length": eval_len, "tasks": args.tasks,
           "num_negatives": cfg.num_negatives, "false_negative_margin": cfg.false_negative_margin,
           "train_s": 0.0, "final_loss": None}
    t0 = time.perf_counter()
    if arm == "untrained":
        enc = load_encoder(cfg.replace(max_length=eval_len))
    else:
        work = pathlib.Path(args.workdir) / f"{arm}_seed{seed}"
        shutil.rmtree(work, ignore_errors=True)
        summary = train(cfg, work, echo=log)
        row["final_loss"] = float(summary["last"]["loss"])
        row["train_s"] = round(time.perf_counter() - t0, 1)
        enc = Encoder.from_pretrained(work / "export", pooling=cfg.eval_pooling,
                                      normalize=cfg.normalize, max_length=eval_len)
        shutil.rmtree(work, ignore_errors=True)
    row["scores"], eval_s = evaluate_encoder(enc, args)
    row["eval_s"] = round(eval_s, 1)
    return row


def _mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(rows: list[dict], tasks: list[str]) -> str:
    """Mean +- sample std over seeds per arm, then the per-seed paired difference."""
    cols = [*tasks, "Avg"]
    lines = ["| arm | n | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    by_arm = {a: sorted((r for r in rows if r["arm"] == a), key=lambda r: r["seed"])
              for a in ARMS}
    for arm, rs in by_arm.items():
        if rs:
            cells = [_mean_std([r["scores"][c] for r in rs]) for c in cols]
            lines.append(f"| {arm} | {len(rs)} | " + " | ".join(cells) + " |")
    hard = {r["seed"]: r for r in by_arm["hard_negatives"]}
    pairs = [(hard[r["seed"]], r) for r in by_arm["in_batch"] if r["seed"] in hard]
    if pairs:
        cells = [_mean_std([h["scores"][c] - b["scores"][c] for h, b in pairs]) for c in cols]
        lines.append(f"| hard_negatives − in_batch (paired) | {len(pairs)} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.tasks = csv_list(args.tasks)
    work = pathlib.Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "snli_triplets.jsonl"
    n = write_triplets(args.snli_dir, data, limit=args.max_triplets)
    log(f"{n} SNLI triplets -> {data}")
    rows = []
    with open(work / "results.jsonl", "w") as out:
        for seed in range(args.seeds):
            for arm in ARMS:
                row = run_one(args, arm, seed, data)
                rows.append(row)
                line = json.dumps(row)
                print(line, flush=True)
                out.write(line + "\n")
                log(f"{arm} seed {seed}: Avg {row['scores']['Avg']:.2f} "
                    f"(train {row['train_s']} s, eval {row['eval_s']} s)")
    text = table(rows, args.tasks)
    (work / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
