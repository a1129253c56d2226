"""The benchmark and experiment scripts, end to end (marker ``scripts``).

Not part of the default ``pytest -q`` (they cost minutes, most of it compiling
train steps); the README and CI add them with ``-m "scripts or not scripts"``. Each script runs
once, with the tiniest settings that still take every code path:

* ``experiments/repro_cpu.py`` and ``distill_cpu.py`` on the random 2-layer
  ``tiny_bert_dir`` model (one step, STS-B only, evaluation truncated to 32
  tokens) on a corpus and pairs drawn from the shared data: the JSON lines, the
  resume logic, the per-method training configs, and that the truncated
  student is exactly the teacher's first layer;
* ``benchmarks/train_step.py`` as ``gpu.sh smoke`` runs it (tiny model, both
  objectives, both frameworks), in-process;
* ``jaxembed bench`` launching a benchmark module from another directory, and
  ``scaling.py --replot`` of the saved sweep.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import train_step
from benchmarks.harness import json_lines
from experiments import distill_cpu as distill
from experiments import repro_cpu as repro

REPO = pathlib.Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.scripts


def _finite_scores(row: dict, tasks) -> None:
    assert set(row["scores"]) == {*tasks, "Avg"}
    for v in row["scores"].values():
        assert math.isfinite(v) and -100.0 <= v <= 100.0


def test_repro_and_distill_scripts_end_to_end(tiny_bert_dir, shared_data, tmp_path, capsys, rng):
    wiki = shared_data / "corpora" / "wiki1m" / "wiki1m_for_simcse.prefix.txt"
    snli = shared_data / "corpora" / "snli_senteval"
    sts = shared_data / "senteval"
    if not (wiki.exists() and snli.exists() and sts.exists()):
        pytest.skip("shared data not present")

    lines = wiki.read_text(encoding="utf-8").splitlines()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines[i] for i in rng.choice(len(lines), 64, replace=False)) + "\n")

    # ---- repro_cpu: "none" + one SimCSE step, mean pooling, STS-B
    work = tmp_path / "repro"
    argv = [
        "--model",
        str(tiny_bert_dir),
        "--steps",
        "1",
        "--batch-size",
        "8",
        "--seeds",
        "1",
        "--poolings",
        "mean",
        "--methods",
        "none,simcse_unsup",
        "--num-groups",
        "4",
        "--tasks",
        "STSBenchmark",
        "--data",
        str(corpus),
        "--sts-dir",
        str(sts),
        "--workdir",
        str(work),
        "--budget-minutes",
        "0",
        "--eval-max-length",
        "32",
    ]
    assert repro.main(argv) == 0
    out = capsys.readouterr().out
    rows = json_lines(out)
    assert [(r["method"], r["pooling"], r["seed"]) for r in rows] == [
        ("none", "mean", None),
        ("simcse_unsup", "mean", 0),
    ]
    keys = {
        "method",
        "pooling",
        "seed",
        "model",
        "tasks",
        "steps",
        "batch_size",
        "learning_rate",
        "train_s",
        "final_loss",
        "scores",
        "eval_s",
        "key",
    }
    for r in rows:
        assert keys <= set(r)
        _finite_scores(r, ["STSBenchmark"])
    assert rows[1]["steps"] == 1 and math.isfinite(rows[1]["final_loss"])
    assert "| simcse_unsup | mean | 1 |" in out and "78.78" in out  # the table with the paper's Avg
    saved = (work / "results.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in saved] == rows

    assert repro.main(argv) == 0  # resume: every run is done, nothing is appended
    capsys.readouterr()
    assert (work / "results.jsonl").read_text().splitlines() == saved

    # the methods differ only in objective and views: same data order, lr, batch and steps
    args = repro.build_parser().parse_args(argv)
    seed = int(rng.integers(100))
    simcse = repro.train_config(args, "simcse_unsup", "cls_before_pooler", seed)
    wcse = repro.train_config(args, "whitenedcse", "cls_before_pooler", seed)
    diff = {k for k, v in simcse.to_dict().items() if wcse.to_dict()[k] != v}
    assert diff == {"objective", "num_views"}
    assert (wcse.num_views, wcse.num_groups, wcse.whitening_eps, wcse.seed) == (3, 4, 1e-5, seed)
    assert (simcse.eval_every, simcse.mlp, simcse.temperature, simcse.max_length) == (
        0,
        True,
        0.05,
        32,
    )

    # ---- distill_cpu: teacher = tiny 2-layer model, student = its first layer, random SNLI pairs
    pairs = tmp_path / "snli"
    pairs.mkdir()
    s1 = (snli / "s1.dev").read_text(encoding="utf-8").splitlines()
    s2 = (snli / "s2.dev").read_text(encoding="utf-8").splitlines()
    pick = rng.choice(len(s1), 32, replace=False)
    (pairs / "s1.dev").write_text("\n".join(s1[i] for i in pick) + "\n")
    (pairs / "s2.dev").write_text("\n".join(s2[i] for i in pick) + "\n")
    dwork = tmp_path / "distill"
    assert (
        distill.main(
            [
                "--model",
                str(tiny_bert_dir),
                "--student-layers",
                "1",
                "--pairs",
                str(pairs),
                "--steps",
                "1",
                "--batch-size",
                "8",
                "--max-length",
                "16",
                "--dse-hidden",
                "16",
                "--tasks",
                "STSBenchmark",
                "--sts-dir",
                str(sts),
                "--speed-sentences",
                "64",
                "--speed-repeats",
                "1",
                "--workdir",
                str(dwork),
                "--eval-max-length",
                "32",
            ]
        )
        == 0
    )
    rows = json_lines(capsys.readouterr().out)
    models = [r for r in rows if "model" in r]
    assert [(r["model"], r["layers"]) for r in models] == [
        ("teacher", 2),
        ("student_init", 1),
        ("student", 1),
    ]
    for r in models:
        _finite_scores(r, ["STSBenchmark"])
    assert models[1]["params"] == models[2]["params"] < models[0]["params"]
    assert models[2]["steps"] == 1 and models[2]["pairs"] == 32
    assert math.isfinite(models[2]["final_loss"])
    speed = [r for r in rows if r.get("speed")][0]
    assert speed["teacher_sent_per_s"] > 0 and speed["student_sent_per_s"] > 0
    teacher_pairs = [
        json.loads(x) for x in (dwork / "teacher_pairs.jsonl").read_text().splitlines()
    ]
    assert len(teacher_pairs) == 32 and all(
        -1.0 - 1e-6 <= p["teacher"] <= 1.0 + 1e-6 for p in teacher_pairs
    )

    # the truncated student is exactly the teacher's embeddings + first layer
    from jaxembed.models.encoder import Encoder

    teacher = Encoder.from_pretrained(tiny_bert_dir)
    student = distill.truncate_encoder(teacher, 1)
    ids = rng.integers(1000, 30000, size=(3, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, 7:] = 0
    want = teacher.apply(teacher.params, ids, mask, output_hidden_states=True).hidden_states[1]
    got = student.apply(student.params, ids, mask).last_hidden_state
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_train_step_benchmark_runs_on_cpu(tmp_path, capsys):
    """``benchmarks/train_step.py`` (what ``gpu.sh`` runs on a lent card) end to end on
    the tiny model: both objectives, both frameworks, a finite loss, FLOPs equal for
    both sides, the speed-up paired by objective, and the whitening groups defaulting
    to 6 channels (hidden 96 -> 16 groups)."""
    argv = ["--model", "tiny", "--batch-sizes", "8", "--steps", "1", "--warmup", "0",
            "--matmul-n", "128", "--cases", "jax,torch", "--out", str(tmp_path)]
    assert train_step.main(argv) == 0
    rows = [r for r in json_lines(capsys.readouterr().out) if r.get("bench") == "train_step"]
    assert sorted((r["case"], r["objective"]) for r in rows) == [
        ("jax", "simcse_unsup"), ("jax", "whitenedcse"),
        ("torch", "simcse_unsup"), ("torch", "whitenedcse")]
    for r in rows:
        assert r["loss_finite"] and r["step_s"] > 0 and r["compile_s"] > 0
        views = 3 if r["objective"] == "whitenedcse" else 2
        assert r["flops_per_step"] == train_step.step_flops(
            train_step.model_config("tiny"), seq_len=32, sequences=8 * views)
    jax_rows = {r["objective"]: r for r in rows if r["case"] == "jax"}
    torch_rows = {r["objective"]: r for r in rows if r["case"] == "torch"}
    for objective, r in jax_rows.items():
        assert r["speedup_vs_torch"] == pytest.approx(
            torch_rows[objective]["step_s"] / r["step_s"])
    saved = json_lines((tmp_path / "results.jsonl").read_text())
    assert saved[0]["bench"] == "train_step_header" and saved[1:] == rows
    assert train_step.num_groups(train_step.parse_args(["--model", "tiny"]), 96) == 16
    with pytest.raises(SystemExit):
        train_step.main(["--model", "tiny", "--num-groups", "7"])


def test_dispatch_gap_benchmark_runs_the_real_trainer(tmp_path, capsys):
    """``benchmarks/dispatch_gap.py`` trains the tiny quick-start config and reports the loop's
    step interval and how often the device had run dry; the trainer's own step is restored."""
    from benchmarks import dispatch_gap
    from jaxembed.train import trainer

    original = trainer.make_train_step
    out = tmp_path / "gap.jsonl"
    assert dispatch_gap.main(["--steps", "10", "--skip", "2", "--label", "t", "--out",
                              str(out)]) == 0
    (row,) = [r for r in json_lines(capsys.readouterr().out) if r.get("bench") == "dispatch_gap"]
    assert row["label"] == "t" and row["measured_steps"] == 6 and row["step_interval_ms"] > 0
    assert 0 <= row["idle_at_dispatch"] <= 1 and json_lines(out.read_text()) == [row]
    assert trainer.make_train_step is original


def test_bench_command_runs_a_benchmark_module_from_anywhere(tmp_path):
    """``jaxembed bench NAME`` runs ``python -m benchmarks.NAME`` with the checkout
    importable, whatever the working directory (no ``sys.path`` edits in scripts)."""
    # the checkout goes on this process's sys.path only: the benchmark's own process
    # can import it only through what ``jaxembed bench`` passes on
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from jaxembed.cli import main; "
            "sys.exit(main(['bench', 'train_step', '--help']))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Train-step throughput" in out.stdout and "--dropout-rng" in out.stdout


def test_scaling_replots_the_saved_sweep(tmp_path, capsys):
    from benchmarks import scaling

    png = tmp_path / "scaling.png"
    saved = REPO / "benchmarks" / "results" / "train_scaling.jsonl"
    assert scaling.main(["--replot", str(saved), "--png", str(png)]) == 0
    rows = json_lines(capsys.readouterr().out)
    assert len(rows) == len(saved.read_text().splitlines()) and png.stat().st_size > 0
    assert {r["sweep"] for r in rows} == {"batch", "devices"}


def test_decoder_encode_benchmark_runs_at_tiny_size(tmp_path, capsys):
    """``benchmarks/decoder_encode.py`` end to end on a tiny random Qwen3: both sides embed
    the same sentences (they agree), every shape compiled up front, one JSON line per round
    and one result line, also appended to ``--out``."""
    from benchmarks import decoder_encode

    out = tmp_path / "decoder.jsonl"
    assert decoder_encode.main(["--size", "tiny", "--n", "16", "--rounds", "1",
                                "--batch-size", "16", "--max-length", "32",
                                "--out", str(out)]) == 0
    rows = json_lines(capsys.readouterr().out)
    assert [r.get("round") for r in rows[:-1]] == [1]
    result = rows[-1]
    assert result["benchmark"] == "decoder_encode" and result["params"] > 0
    assert result["jaxembed_sent_per_s"] > 0 and result["transformers_sent_per_s"] > 0
    assert result["traces_after_precompile"] == 0
    assert result["max_abs_diff"] < 1e-5  # same model, same pooling: float32 agreement
    assert json_lines(out.read_text()) == rows


def test_lora_memory_benchmark_counts_adapter_state_only(capsys):
    """``benchmarks/lora_memory.py`` on the tiny Qwen3: AdamW's state is two moments of
    what is trained (+ two int32 step counts), so LoRA's is two adapter copies; the LoRA
    step takes the frozen base as an argument and donates only adapters and state."""
    from benchmarks import lora_memory

    lora_memory.main(["--models", "qwen3-tiny", "--batch", "2", "--seq", "8"])
    full, low = [r for r in json_lines(capsys.readouterr().out) if r["bench"] == "lora_memory"]
    for r in (full, low):
        assert r["materialised"] and r["opt_state_bytes"] == 2 * r["trained_bytes"] + 8
    assert full["trained_params"] == full["base_params"] == low["base_params"]
    # rank 8 on 2 layers x 7 projections: A [in, 8] + B [8, out] each
    h, q, kv, m = 64, 4 * 16, 2 * 16, 128
    assert low["trained_params"] == 2 * 8 * ((h + q) * 2 + (h + kv) * 2 + (h + m) * 3)
    assert low["step_argument_bytes"] >= 4 * low["base_params"] + low["opt_state_bytes"]
    assert low["step_alias_bytes"] < full["step_alias_bytes"]


def test_embedding_grad_benchmark_and_variants(tmp_path, capsys):
    """``benchmarks/embedding_grad.py`` (``gpu.sh investigate``'s first part) on tiny
    shapes: a row per table x dtype and per lookup, each case's ratio to its reference,
    a PTX grep that reports finding no files on a CPU; and ``train_step``'s variant
    options parsed as ``gpu.sh`` passes them."""
    from benchmarks import embedding_grad

    argv = ["--hidden", "8", "--batch", "2", "--seq-len", "4", "--repeats", "1",
            "--ptx-dir", str(tmp_path), "--out", str(tmp_path)]
    assert embedding_grad.main(argv) == 0
    rows = json_lines(capsys.readouterr().out)
    scatters = {(r["table"], r["dtype"]): r for r in rows if r["bench"] == "embedding_scatter"}
    assert set(scatters) == {(t, d) for t in ("word", "position", "type")
                             for d in ("bfloat16", "float32")}
    for (table, dtype), r in scatters.items():
        ref = scatters[table, "bfloat16"]["ms"]
        assert r["ms"] > 0 and r["vs_bf16"] == pytest.approx(ref / r["ms"])
        assert r["tokens"] == 2 * 2 * 4
    lookups = {r["lookup"] for r in rows if r["bench"] == "embedding_lookup"}
    assert lookups == set(embedding_grad.LOOKUPS)
    assert rows[-1] == {"bench": "embedding_scatter_ptx", "ptx_files": 0, "backend": "cpu",
                        "tag": ""}
    (tmp_path / "module_0001.jit_scatter_type_bfloat16.ptx").write_text(
        "atom.global.cas.b32 %r1, [%rd1], %r2, %r3;\natom.global.cas.b32 x;\n")
    assert embedding_grad.grep_ptx(tmp_path) == [
        {"table": "type", "dtype": "bfloat16", "file": "module_0001.jit_scatter_type_bfloat16.ptx",
         "atom_cas": 2, "atom_add": 0}]
    args = train_step.parse_args(["--dropout", "0.1/0,0", "--attention", "xla,cudnn",
                                  "--embedding-lookup", "auto,cast_take"])
    assert args.dropout == [(0.1, 0.0), (0.0, 0.0)]
    assert args.attention == ["xla", "cudnn"] and args.embedding_lookup == ["auto", "cast_take"]
    assert train_step.parse_args([]).dropout == [None]
