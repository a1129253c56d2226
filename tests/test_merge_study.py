"""``experiments/merge_cpu.py`` end to end at the tiniest settings (marker ``scripts``).

The random 2-layer ``tiny_bert_dir`` model, one training step per task model,
STS-B only: the rows and their order, the training files (tasks of equal size,
the joint file their concatenation, the probe disjoint from them), that the
``uniform`` row is the NumPy float64 mean of the three exported task models,
the task-arithmetic ``alpha`` is the dev-best of the grid, and that a second
run appends nothing (resume).
"""

from __future__ import annotations

import csv
import json

import jax
import numpy as np
import pytest

from experiments import merge_cpu as study

pytestmark = pytest.mark.scripts


def _pairs(path):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["sent0", "sent1"]
    return [tuple(r) for r in rows[1:]]


def test_merge_study_end_to_end(tiny_bert_dir, shared_data, tmp_path, capsys):
    if not (shared_data / "corpora" / "snli_senteval").exists():
        pytest.skip("shared data not present")
    work = tmp_path / "merge"
    argv = ["--model", str(tiny_bert_dir), "--workdir", str(work), "--steps", "1",
            "--batch-size", "8", "--seeds", "1", "--rows", "16", "--probe-rows", "4",
            "--sp-steps", "2", "--sp-batch", "4", "--alphas", "0.5,1.0",
            "--tasks", "STSBenchmark", "--eval-max-length", "32",
            "--wiki", str(shared_data / "corpora" / "wiki1m" / "wiki1m_for_simcse.prefix.txt"),
            "--snli", str(shared_data / "corpora" / "snli_senteval"),
            "--stsb", str(shared_data / "senteval" / "downstream" / "STS" / "STSBenchmark"),
            "--sts-dir", str(shared_data / "senteval")]
    assert study.main(argv) == 0
    table = capsys.readouterr().out
    rows = [json.loads(x) for x in (work / "results.jsonl").read_text().splitlines()]
    assert [r["method"] for r in rows] == list(study.METHODS)
    for r in rows:
        assert np.isfinite(r["scores"]["STSBenchmark"])
        assert f"| {r['method']} | 1 | {r['scores']['Avg']:.2f}" in table
    by = {r["method"]: r for r in rows}

    data = work / "data"
    tasks = {t: _pairs(data / f"{t}.csv") for t in study.TASKS}
    assert all(len(p) == 16 for p in tasks.values())
    assert all(a == b for a, b in tasks["wiki"])            # unsupervised: a sentence twice
    assert _pairs(data / "joint.csv") == [p for t in study.TASKS for p in tasks[t]]
    probe = [json.loads(x) for x in (data / "probe.jsonl").read_text().splitlines()]
    assert [p["task"] for p in probe] == [t for t in study.TASKS for _ in range(4)]
    for p in probe:                                        # held out of every training file
        assert (p["anchor"], p["positive"]) not in tasks[p["task"]]

    assert by["joint"]["steps"] == 3 and by["task:wiki"]["steps"] == 1
    ta = by["task_arithmetic"]
    assert set(ta["dev"]) == {"0.5", "1.0"}                 # JSON keys: the grid
    assert ta["dev"][str(ta["alpha"])] == max(ta["dev"].values())
    assert len(by["self_positioning"]["lambdas"]) == 3
    assert len(by["self_positioning"]["history"]) == 2

    # uniform = mean of the three task models, recomputed in float64 from their exports
    from jaxembed.models.encoder import Encoder

    base = Encoder.from_pretrained(tiny_bert_dir, pooling="mean", normalize=True)
    models = [Encoder.from_pretrained(work / "seed0" / t / "export").params for t in study.TASKS]
    mean = jax.tree_util.tree_map(
        lambda *xs: np.mean([np.asarray(x, np.float64) for x in xs], axis=0).astype(np.float32),
        *models)
    args = study.build_parser().parse_args(argv)
    args.tasks = ["STSBenchmark"]
    scores, _ = study.evaluate_encoder(base.replace(params=mean, max_length=32), args)
    assert scores["STSBenchmark"] == pytest.approx(by["uniform"]["scores"]["STSBenchmark"],
                                                   abs=1e-3)

    saved = (work / "results.jsonl").read_text()
    assert study.main(argv) == 0                           # resume: nothing appended
    assert (work / "results.jsonl").read_text() == saved
