"""Model-merging study on CPU (#18.4): one model per task from all-MiniLM-L6-v2, merged, vs joint training.

    .venv/bin/python -m experiments.merge_cpu --workdir /tmp/merge            # the default study
    .venv/bin/python -m experiments.merge_cpu --steps 2 --batch-size 4 --seeds 1 --rows 40 \\
        --probe-rows 8 --sp-steps 2 --tasks STSBenchmark --workdir /tmp/merge_smoke  # smoke run

What it runs. Three tasks, each a file of sentence pairs (``sent0,sent1``) built
from training data only, ``--rows`` pairs per task (1,300 by default, so no
task outweighs another), and a disjoint probe of ``--probe-rows`` (64) pairs per
task held out of them:

* ``wiki``: unsupervised SimCSE, each Wikipedia sentence paired with itself (two
  dropout passes: Gao et al. 2021), from the wiki1m prefix;
* ``snli``: supervised SimCSE pairs (premise, entailment hypothesis) from SNLI's
  SentEval ``dev`` split (the only one shipped here; no SNLI split is evaluated);
* ``stsb``: STS-B **train** pairs whose gold score is >= 4 of 5 (1,406 pairs)
  as paraphrase pairs.

For every seed ``0 .. --seeds-1`` (the seed sets the data order and dropout):

* ``task:wiki``, ``task:snli``, ``task:stsb``: ``--steps`` steps of in-batch
  InfoNCE (tau 0.05, the trainer's ``simcse_sup`` objective without hard
  negatives) on that task's pairs, with ``jaxembed.train``;
* ``joint``: the same objective on the three files concatenated (shuffled by the
  trainer), for ``3 x --steps`` steps: the same total steps and data as the
  three task models together;
* ``uniform``: ``θ₀ + Σ τᵢ / 3`` (the uniform soup of the task models);
* ``task_arithmetic``: ``θ₀ + α Σ τᵢ`` with ``α`` picked from ``--alphas`` by
  STS-B **dev** Spearman (a validation split, never a test set);
* ``self_positioning``: ``θ₀ + Σ λᵢ τᵢ`` with ``λ`` (one per task, from 1/3)
  fitted by ``--sp-steps`` Adam steps at ``--sp-lr`` on the task-balanced
  InfoNCE of the probe (:mod:`jaxembed.merge.probe`; ``--sp-batch`` pairs per
  task per step), i.e. on training data only;

and ``base`` (all-MiniLM-L6-v2 as released) once. Each is evaluated on the
STS test sets (``evaluate_sts``, "all" aggregation, cosine, Spearman x 100).
One JSON line per row goes to ``WORKDIR/results.jsonl`` (rows already there are
skipped, and an interrupted training run resumes from its checkpoint, so a
killed study continues); the table (mean +- sample std over seeds) goes to
stdout and ``WORKDIR/table.md``.

Choices (the issue's examples, adapted so that a joint run exists):

* one objective for every task. The issue's example tasks used three losses
  (unsup SimCSE, sup SimCSE, DSE regression); joint training with one trainer
  and one loss needs one batch format, so every task here is a pair-InfoNCE task
  and the tasks differ in their data only (as in the paper, whose tasks are
  data sources under one contrastive loss). STS-B's scores enter through the
  >= 4 threshold, not a regression.
* the probe of the wiki task pairs a sentence with itself; without dropout its
  InfoNCE rewards spreading sentences apart (uniformity), not alignment.
* tiny training (1,300 pairs, ``--steps`` x ``--batch-size`` per task): these
  are small task vectors on an already contrastively trained model, so the
  study shows how the merges compare at this scale, not the paper's MTEB gains.

References:
    Li et al., "Improving General Text Embedding Model: Tackling Task Conflict
    and Data Imbalance through Model Merging", arXiv 2410.15035 (2024).
    Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023.
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import resource
import statistics
import sys
import time

import numpy as np

from experiments._sts_study import (
    REPO,
    SHORT,
    add_eval_arguments,
    add_model_argument,
    csv_list,
    evaluate_encoder,
    load_results,
    log,
)

DATA = REPO.parent / "shared" / "data"
TASKS = ("wiki", "snli", "stsb")
METHODS = ("base", *(f"task:{t}" for t in TASKS), "joint", "uniform", "task_arithmetic",
           "self_positioning")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    add_model_argument(p, help="base model (alias or folder)")
    add_eval_arguments(p, max_length_help="eval max tokens (0: the model's own)")
    p.add_argument("--wiki", default=str(DATA / "corpora" / "wiki1m"
                                         / "wiki1m_for_simcse.prefix.txt"))
    p.add_argument("--snli", default=str(DATA / "corpora" / "snli_senteval"))
    p.add_argument("--stsb", default=str(DATA / "senteval" / "downstream" / "STS"
                                         / "STSBenchmark"), help="folder with sts-{train,dev}.csv")
    p.add_argument("--rows", type=int, default=1300, help="training pairs per task")
    p.add_argument("--probe-rows", type=int, default=64, help="held-out probe pairs per task")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=40, help="steps per task model (joint: 3x)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--max-length", type=int, default=32, help="training tokens per text")
    p.add_argument("--alphas", default="0.333333,0.5,0.75,1.0",
                   help="task arithmetic: scales of the summed task vectors tried on STS-B dev")
    p.add_argument("--sp-steps", type=int, default=30)
    p.add_argument("--sp-lr", type=float, default=0.05)
    p.add_argument("--sp-batch", type=int, default=16, help="probe pairs per task per step")
    return p


# ------------------------------------------------------------------ data (training splits only)
def task_pairs(args) -> dict[str, list[tuple[str, str]]]:
    """All candidate pairs of every task, shuffled once with a fixed generator."""
    from jaxembed.data.sources import snli_triplets
    from jaxembed.eval.datasets import read_stsb

    wiki = [" ".join(s.split()) for s in pathlib.Path(args.wiki).read_text("utf-8").splitlines()]
    s1, s2, gold = read_stsb(pathlib.Path(args.stsb) / "sts-train.csv")
    pairs = {
        "wiki": [(s, s) for s in wiki if s],
        "snli": [row[:2] for row in snli_triplets(args.snli, "dev").rows],
        "stsb": [(a, b) for a, b, y in zip(s1, s2, gold) if y >= 4.0],
    }
    rng = np.random.default_rng(0)
    return {t: [rows[i] for i in rng.permutation(len(rows))] for t, rows in pairs.items()}


def build_data(args, out: pathlib.Path) -> dict:
    """``out/{task}.csv`` (``--rows`` pairs each), ``out/joint.csv`` (all of them) and
    ``out/probe.jsonl`` (``--probe-rows`` other pairs per task); returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    pairs = task_pairs(args)
    need = args.rows + args.probe_rows
    for task, rows in pairs.items():
        if len(rows) < need:
            raise ValueError(f"task {task} has {len(rows)} pairs; --rows + --probe-rows = {need}")
    files = {t: out / f"{t}.csv" for t in (*TASKS, "joint")}
    train = {t: pairs[t][args.probe_rows:need] for t in TASKS}
    train["joint"] = [row for t in TASKS for row in train[t]]
    for task, path in files.items():
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["sent0", "sent1"])
            w.writerows(train[task])
    probe = out / "probe.jsonl"
    with open(probe, "w", encoding="utf-8") as f:
        for t in TASKS:
            for a, b in pairs[t][:args.probe_rows]:
                f.write(json.dumps({"task": t, "anchor": a, "positive": b}) + "\n")
    return {"files": files, "probe": probe}


# ------------------------------------------------------------------ training
def train_config(args, data: pathlib.Path, *, steps: int, seed: int):
    from jaxembed.train.config import TrainConfig

    return TrainConfig(
        model=args.model, objective="simcse_sup", data=str(data), data_format="triplets",
        train_pooling="mean", eval_pooling="mean", normalize=True, mlp=False,
        temperature=0.05, max_length=args.max_length, batch_size=args.batch_size,
        steps=steps, learning_rate=args.learning_rate, warmup_ratio=0.0, weight_decay=0.0,
        mixed_precision=False, eval_every=0, save_every=steps, keep=1, seed=seed,
        progress=False,
    )


def train_model(args, name: str, data: pathlib.Path, *, steps: int, seed: int) -> dict:
    """Train (or resume, or find finished: then it returns at once) ``name`` for ``seed``; its
    export folder and seconds."""
    from jaxembed.train.trainer import train

    work = pathlib.Path(args.workdir) / f"seed{seed}" / name
    t0 = time.perf_counter()
    if not (work / "export" / "config.json").exists():
        log(f"train {name} seed {seed}: {steps} steps")
        train(train_config(args, data, steps=steps, seed=seed), work, echo=log)
    return {"export": work / "export", "train_s": round(time.perf_counter() - t0, 1)}


# ------------------------------------------------------------------ merging
def tune_alpha(args, base, vectors) -> tuple[float, dict]:
    """``α`` of ``θ₀ + α Σ τᵢ`` with the best STS-B dev Spearman over ``--alphas``."""
    from jaxembed import merge
    from jaxembed.eval.dev import make_stsb_evaluator

    dev = make_stsb_evaluator(pathlib.Path(args.stsb) / "sts-dev.csv")
    scores = {}
    for alpha in (float(a) for a in csv_list(args.alphas)):
        params = merge.task_arithmetic(base.params, vectors, [alpha] * len(vectors))
        enc = base.replace(params=params)
        scores[alpha] = float(dev(lambda s: enc.encode(s, batch_size=args.eval_batch_size)))
        log(f"  alpha {alpha:.3f}: STS-B dev {scores[alpha]:.2f}")
    return max(scores, key=scores.get), scores


def self_position(args, base, vectors, probe: pathlib.Path, seed: int):
    from jaxembed.merge.positioning import self_positioning
    from jaxembed.merge.probe import probe_batches, probe_loss, read_probe

    batches = probe_batches(
        read_probe(probe),
        lambda texts: base.tokenize(texts, max_length=args.max_length),
        batch_size=args.sp_batch, seed=seed,
    )

    def progress(step, loss, lam):
        if step % 10 == 0 or step == args.sp_steps - 1:
            log(f"  self positioning step {step + 1}/{args.sp_steps}: probe loss {loss:.4f} "
                f"lambda {np.array2string(np.asarray(lam), precision=3)}")

    return self_positioning(probe_loss(base.embed, temperature=0.05), base.params, vectors,
                            steps=args.sp_steps, lr=args.sp_lr, batches=batches,
                            callback=progress)


def merged_rows(args, base, exports: dict, probe: pathlib.Path, seed: int):
    """(method, encoder, extra fields) of the three merges of one seed's task models."""
    import jax

    from jaxembed import merge
    from jaxembed.models.encoder import Encoder

    models = [Encoder.from_pretrained(exports[t]).params for t in TASKS]
    vectors = merge.task_vectors(base.params, models)
    norms = {t: float(np.sqrt(sum(float(np.sum(np.square(x))) for x in jax.tree_util.tree_leaves(v))))
             for t, v in zip(TASKS, vectors)}
    log(f"seed {seed}: task vector norms " + ", ".join(f"{t} {n:.3f}" for t, n in norms.items()))
    n = len(TASKS)
    yield "uniform", base.replace(
        params=merge.task_arithmetic(base.params, vectors, [1 / n] * n)), {"weights": [1 / n] * n}
    t0 = time.perf_counter()
    alpha, dev = tune_alpha(args, base, vectors)
    yield "task_arithmetic", base.replace(
        params=merge.task_arithmetic(base.params, vectors, [alpha] * n)), {
            "alpha": alpha, "dev": dev, "tune_s": round(time.perf_counter() - t0, 1)}
    t0 = time.perf_counter()
    result = self_position(args, base, vectors, probe, seed)
    yield "self_positioning", base.replace(params=result.params), {
        "lambdas": np.asarray(result.lambdas).tolist(), "final_loss": result.final_loss,
        "history": [round(float(h), 5) for h in result.history],
        "fit_s": round(time.perf_counter() - t0, 1)}


# ------------------------------------------------------------------ bookkeeping
def run_key(args, method: str, seed) -> str:
    parts = [method, f"seed={seed}", f"model={args.model}", f"tasks={','.join(args.tasks)}",
             f"eval_max_length={args.eval_max_length}"]
    if method != "base":
        parts += [f"steps={args.steps}", f"batch={args.batch_size}", f"lr={args.learning_rate}",
                  f"max_length={args.max_length}", f"rows={args.rows}",
                  f"probe_rows={args.probe_rows}"]
    if method == "task_arithmetic":
        parts.append(f"alphas={args.alphas}")
    if method == "self_positioning":
        parts += [f"sp_steps={args.sp_steps}", f"sp_lr={args.sp_lr}", f"sp_batch={args.sp_batch}"]
    return "|".join(parts)


def markdown_table(rows: list[dict], tasks) -> str:
    cols = [SHORT.get(t, t) for t in tasks] + ["Avg"]
    lines = ["| model | n | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for method in METHODS:
        got = [r for r in rows if r["method"] == method]
        if not got:
            continue
        cells = []
        for key in [*tasks, "Avg"]:
            vals = [r["scores"][key] for r in got]
            cells.append(f"{vals[0]:.2f}" if len(vals) == 1 else
                         f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}")
        lines.append(f"| {method} | {len(got)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.tasks = csv_list(args.tasks)
    from jaxembed.models.encoder import Encoder
    from jaxembed.models.hub import resolve

    t_start = time.perf_counter()
    work = pathlib.Path(args.workdir)
    data = build_data(args, work / "data")
    results_path = work / "results.jsonl"
    done = load_results(results_path)
    base = Encoder.from_pretrained(resolve(args.model), pooling="mean", normalize=True)
    if args.eval_max_length:
        base = base.replace(max_length=args.eval_max_length)

    def emit(method, seed, enc, **extra):
        scores, eval_s = evaluate_encoder(enc, args)
        row = {"method": method, "seed": seed, "scores": scores, "eval_s": round(eval_s, 1),
               **extra, "key": run_key(args, method, seed)}
        with open(results_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        done[row["key"]] = row
        log(f"{method} seed {seed}: Avg {scores['Avg']:.2f} (eval {eval_s:.0f} s)")

    if run_key(args, "base", None) not in done:
        emit("base", None, base)
    for seed in range(args.seeds):
        exports = {}
        for name in (*TASKS, "joint"):
            steps = args.steps * (len(TASKS) if name == "joint" else 1)
            method = "joint" if name == "joint" else f"task:{name}"
            trained = train_model(args, name, data["files"][name], steps=steps, seed=seed)
            exports[name] = trained["export"]
            if run_key(args, method, seed) not in done:
                enc = Encoder.from_pretrained(trained["export"], pooling="mean", normalize=True,
                                              max_length=base.max_length)
                emit(method, seed, enc, train_s=trained["train_s"], steps=steps)
        todo = [m for m in METHODS[5:] if run_key(args, m, seed) not in done]
        if todo:
            for method, enc, extra in merged_rows(args, base, exports, data["probe"], seed):
                if method in todo:
                    emit(method, seed, enc, **extra)
    rows = [r for r in done.values() if r["key"] in
            {run_key(args, m, s) for m in METHODS for s in [None, *range(args.seeds)]}]
    table = markdown_table(rows, args.tasks)
    (work / "table.md").write_text(table + "\n")
    print(table)
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    log(f"study done in {time.perf_counter() - t_start:.0f} s wall, "
        f"{cpu.ru_utime + cpu.ru_stime:.0f} s CPU (this invocation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
