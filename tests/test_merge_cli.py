"""``jaxembed merge`` end to end on tiny random BERT folders, and the probe format and loss."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _loss_refs import np_info_nce

from jaxembed import merge
from jaxembed.cli import main
from jaxembed.merge.probe import probe_batches, probe_loss, read_probe

SENTENCES = [
    "A man is playing a guitar.", "Someone plays music on stage.", "The cat sleeps on the sofa.",
    "A kitten is napping indoors.", "Stocks fell sharply on Monday.", "Markets dropped today.",
    "How do I bake bread?", "Bread baking needs flour, water and yeast.", "Where is Paris?",
    "Paris is the capital of France.", "What is JAX?", "JAX is a numerical computing library.",
    "Two dogs run in a field.", "Dogs are playing outside.", "It is raining heavily.",
    "The weather is wet and stormy.",
]


def _perturbed_copy(src, dst, seed, *, scale=0.02, config=None):
    """``src`` (HF BERT folder) with every weight moved by N(0, scale²) noise, or a fresh
    random model with ``config`` changes, plus ``src``'s tokenizer files."""
    from _optional import needs_torch, torch

    needs_torch()  # transformers' models require torch
    import transformers

    shutil.copytree(src, dst)
    torch.manual_seed(seed)
    if config:
        cfg = transformers.BertConfig.from_pretrained(src, **config)
        model = transformers.BertModel(cfg)
    else:
        model = transformers.BertModel.from_pretrained(src)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(scale * torch.randn_like(p))
    model.save_pretrained(dst, safe_serialization=True)
    return dst


@pytest.fixture(scope="module")
def folders(tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    return {
        "base": tiny_bert_dir,
        "a": _perturbed_copy(tiny_bert_dir, root / "a", 1),
        "b": _perturbed_copy(tiny_bert_dir, root / "b", 2),
        "one_layer": _perturbed_copy(tiny_bert_dir, root / "one_layer", 3,
                                     config={"num_hidden_layers": 1}),
    }


def _load(folder):
    from jaxembed.models.encoder import Encoder

    return Encoder.from_pretrained(folder)


@pytest.fixture(scope="module")
def params(folders):
    """The folders' parameters as ``Encoder.from_pretrained`` loads them (what the CLI merges)."""
    return {k: _load(folders[k]).params for k in ("base", "a", "b")}


def _hf_params(folder):
    """float64 NumPy parameters of a folder as ``transformers`` loads them (and check it
    loads with no missing or unexpected weights)."""
    import transformers

    model, info = transformers.BertModel.from_pretrained(str(folder), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return {k: v.detach().numpy().astype(np.float64) for k, v in model.named_parameters()}


def _run(capsys, *args):
    rc = main(["merge", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_task_arithmetic_folder_loads_in_transformers_with_the_float64_weights(
    folders, tmp_path, capsys
):
    from _optional import needs_torch

    needs_torch()  # sentence-transformers requires torch
    from sentence_transformers import SentenceTransformer

    out_dir = tmp_path / "merged"
    rc, out, err = _run(capsys, "--method", "task_arithmetic", "--base", folders["base"],
                        "--models", folders["a"], folders["b"], "--weights", 0.7, -0.2,
                        "--out", out_dir, "--json")
    assert rc == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["method"] == "task_arithmetic" and result["weights"] == [0.7, -0.2]
    base, a, b = (_hf_params(folders[k]) for k in ("base", "a", "b"))
    merged = _hf_params(out_dir)
    assert merged.keys() == base.keys()
    for name, x0 in base.items():
        want = x0 + 0.7 * (a[name] - x0) - 0.2 * (b[name] - x0)
        # float32: a handful of roundings of values |x| < 0.2 (weights ~N(0, 0.02²) + noise)
        np.testing.assert_allclose(merged[name], want, atol=1e-7, rtol=1e-6, err_msg=name)
    texts = SENTENCES[:4]
    st = SentenceTransformer(str(out_dir), device="cpu").encode(texts)
    ours = _load(out_dir).encode(texts)
    np.testing.assert_allclose(st, ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method,extra", [
    ("linear", ["--weights", "1", "3"]),
    ("slerp", ["--weights", "0.3"]),
])
def test_cli_methods_write_what_the_functions_compute(folders, params, tmp_path, capsys, method,
                                                     extra):
    models = ["a"] if method == "slerp" else ["a", "b"]
    rc, _, err = _run(capsys, "--method", method, "--base", folders["base"], "--models",
                      *(folders[m] for m in models), "--out", tmp_path, *extra)
    assert rc == 0, err
    base, inputs = params["base"], [params[m] for m in models]
    want = {
        "linear": lambda: merge.linear(inputs, [1.0, 3.0]),
        "slerp": lambda: merge.slerp(base, inputs[0], 0.3),
    }[method]()
    got = _load(tmp_path).params
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    if method == "linear":  # and against float64: (1 a + 3 b) / 4
        a, b, m = _hf_params(folders["a"]), _hf_params(folders["b"]), _hf_params(tmp_path)
        for name in a:
            np.testing.assert_allclose(m[name], 0.25 * a[name] + 0.75 * b[name], atol=1e-7,
                                       rtol=1e-6, err_msg=name)


def test_ties_and_dare_cli_pass_their_options(folders, params, tmp_path, capsys, monkeypatch):
    """The wiring only: ``ties`` and ``dare`` are tested against NumPy in test_merge.py, and
    on BERT they compile a sort / threefry kernel per leaf shape (~0.5 s of CPU each, 11)."""
    calls = []

    def fake_ties(base, vectors, *, density, weights, scale):
        calls.append(("ties", density, weights, scale))
        return merge.task_arithmetic(base, vectors, [scale * w for w in weights])

    def fake_dare(vectors, *, drop_rate, key):
        calls.append(("dare", drop_rate, jax.random.key_data(key)))
        return [jax.tree.map(lambda x: 2 * x, v) for v in vectors]

    monkeypatch.setattr(merge, "ties", fake_ties)
    monkeypatch.setattr(merge, "dare", fake_dare)
    taus = merge.task_vectors(params["base"], [params["a"], params["b"]])
    runs = {
        "ties": (["--density", 0.4, "--scale", 0.8], [0.8, 0.8], taus),
        "dare": (["--drop-rate", 0.7, "--seed", 3, "--weights", 0.5, 0.25], [0.5, 0.25],
                 [jax.tree.map(lambda x: 2 * x, t) for t in taus]),
    }
    for method, (extra, weights, vectors) in runs.items():
        rc, _, err = _run(capsys, "--method", method, "--base", folders["base"], "--models",
                          folders["a"], folders["b"], "--out", tmp_path / method, *extra)
        assert rc == 0, err
        want = merge.task_arithmetic(params["base"], vectors, weights)
        for x, y in zip(jax.tree.leaves(_load(tmp_path / method).params), jax.tree.leaves(want)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert calls[0] == ("ties", 0.4, [1.0, 1.0], 0.8)  # TIES weights default to 1 each
    assert calls[1][:2] == ("dare", 0.7)
    np.testing.assert_array_equal(calls[1][2], jax.random.key_data(jax.random.key(3)))


def _write_probe(path, tasks=("sts", "qa"), per_task=4):
    lines, k = [], 0
    for task in tasks:
        for _ in range(per_task):
            lines.append(json.dumps({"task": task, "anchor": SENTENCES[k % 16],
                                     "positive": SENTENCES[(k + 1) % 16]}))
            k += 2
    path.write_text("\n".join(lines) + "\n")
    return path


def test_self_positioning_cli_learns_lambdas_and_writes_their_merge(folders, params, tmp_path,
                                                                     capsys):
    probe = _write_probe(tmp_path / "probe.jsonl")
    rc, out, err = _run(capsys, "--method", "self_positioning", "--base", folders["base"],
                        "--models", folders["a"], folders["b"], "--probe", probe,
                        "--steps", 4, "--lr", 0.05, "--batch-size", 4, "--log-every", 1,
                        "--out", tmp_path / "sp", "--json")
    assert rc == 0, err
    assert "probe: 2 tasks (sts: 4, qa: 4)" in out and "step 4/4" in out
    result = json.loads(out.strip().splitlines()[-1])
    assert len(result["lambdas"]) == 2 and len(result["history"]) == 4
    # every step sees the whole probe (4 pairs per task), so the objective is fixed
    assert result["final_loss"] < result["history"][0]
    assert result["lambdas"] != [0.5, 0.5]
    taus = merge.task_vectors(params["base"], [params["a"], params["b"]])
    want = merge.task_arithmetic(params["base"], taus, np.float32(result["lambdas"]))
    for x, y in zip(jax.tree.leaves(_load(tmp_path / "sp").params),
                    jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-7, rtol=1e-6)

    # --per-layer and --init wiring; 0 steps keeps it cheap (no gradient compile)
    rc, out, err = _run(capsys, "--method", "self_positioning", "--base", folders["base"],
                        "--models", folders["a"], folders["b"], "--probe", probe, "--steps", 0,
                        "--per-layer", "--init", 0.3, 0.6, "--out", tmp_path / "pl", "--json")
    assert rc == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["groups"] == ["embeddings", "layer_0", "layer_1", "pooler"]
    np.testing.assert_array_equal(result["lambdas"], np.float32([[0.3, 0.6]] * 4))
    assert result["history"] == [] and np.isfinite(result["final_loss"])


def test_bad_inputs_give_clear_errors(folders, tmp_path, capsys):
    common = ["--base", folders["base"], "--out", tmp_path / "x"]
    cases = [
        (["--method", "task_arithmetic", "--models", folders["one_layer"]],
         "config differs from --base: num_hidden_layers 1 vs 2"),
        (["--method", "task_arithmetic", "--models", folders["a"], folders["b"],
          "--weights", 1, 2, 3], "--weights needs one number per --models folder (2), got 3"),
        (["--method", "slerp", "--models", folders["a"], folders["b"]],
         "exactly one --models folder, got 2"),
        (["--method", "self_positioning", "--models", folders["a"]], "needs --probe"),
        (["--method", "linear", "--models", folders["a"], "--probe", "p.jsonl"],
         "--probe is only used by self_positioning"),
        (["--method", "linear", "--models", tmp_path / "missing"], "missing"),
    ]
    for args, message in cases:
        rc, _, err = _run(capsys, *common, *args)
        assert rc == 2 and message in err, (args, err)
    assert not (tmp_path / "x").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"anchor": "a", "positive": "b"}\n{"anchor": "c"}\n')
    rc, _, err = _run(capsys, *common, "--method", "self_positioning", "--models", folders["a"],
                      "--probe", bad)
    assert rc == 2 and "bad.jsonl:2: 'positive' must be a non-empty string" in err


# ------------------------------------------------------------------ probe format and loss


def test_read_probe_groups_tasks_and_rejects_bad_files(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"task": "a", "anchor": "x1", "positive": "y1", "negative": "z1"}\n\n'
        '{"task": "b", "anchor": "x2", "positive": "y2", "negative": "z2"}\n'
        '{"task": "a", "anchor": "x3", "positive": "y3", "negative": "z3"}\n'
        '{"task": "b", "anchor": "x4", "positive": "y4", "negative": "z4"}\n'
    )
    probe = read_probe(path)
    assert probe.tasks == ("a", "b") and probe.num_columns == 3
    assert probe.texts[0] == [["x1", "x3"], ["y1", "y3"], ["z1", "z3"]]
    cases = {
        '{"anchor": "a", "positive": "b", "negative": "c"}\n{"anchor": "a", "positive": "b"}':
            "p.jsonl:2: 'negative' must be on every line or on none",
        '{"anchor": "a", "positive": "b"}\nnot json': "p.jsonl:2: not valid JSON",
        '{"anchor": "a", "positive": "b"}\n{"anchor": "c", "positive": "d", "task": 3}':
            "p.jsonl:2: 'task' must be a string",
        '{"anchor": "a", "positive": "b", "task": "t"}\n{"anchor": "c", "positive": "d"}':
            "task 't' has 1 pair",
        "\n": "no probe pairs",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_probe(path)


def _fake_tokenize(texts):
    """Text -> its index as a one-token sequence, so batches can be decoded back."""
    ids = np.arange(len(texts), dtype=np.int32)[:, None] + np.zeros((1, 3), np.int32)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids)}


def test_probe_batches_are_task_balanced_and_seeded(tmp_path):
    probe = _write_probe(tmp_path / "p.jsonl", tasks=("big", "small"), per_task=6)
    lines = probe.read_text().splitlines()
    probe.write_text("\n".join(lines[:6] + lines[6:9]) + "\n")  # big: 6 pairs, small: 3
    p = read_probe(probe)
    flat = [t for cols in p.texts for col in cols for t in col]
    batches = probe_batches(p, _fake_tokenize, batch_size=4, seed=7)
    first = next(batches)
    assert first["input_ids"].shape == (2, 2, 3, 3)  # tasks, columns, min(4, 3) rows, tokens
    for task, cols in enumerate(p.texts):
        for row in range(3):
            anchor = flat[first["input_ids"][task, 0, row, 0]]
            positive = flat[first["input_ids"][task, 1, row, 0]]
            i = cols[0].index(anchor)
            assert cols[1][i] == positive  # pairs stay aligned
    again = next(probe_batches(p, _fake_tokenize, batch_size=4, seed=7))
    np.testing.assert_array_equal(first["input_ids"], again["input_ids"])
    seen = {int(i) for _ in range(30) for i in next(batches)["input_ids"][0, 0, :, 0]}
    assert len(seen) == 6  # every row of the big task is drawn (each misses a draw w.p. 1/2)
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        probe_batches(p, _fake_tokenize, batch_size=1, seed=0)


def test_probe_loss_is_the_mean_of_per_task_info_nce(rng):
    t, c, b, d = 3, 3, 5, 8
    table = rng.standard_normal((t * c * b, d)).astype(np.float32)
    ids = np.arange(t * c * b, dtype=np.int32).reshape(t, c, b, 1)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    embed = lambda params, flat: params[flat["input_ids"][:, 0]]  # noqa: E731
    got = jax.jit(probe_loss(embed, temperature=0.1))(jnp.asarray(table), batch)
    z = table.reshape(t, c, b, d)
    want = np.mean([np_info_nce(z[i, 0], z[i, 1], z[i, 2], temperature=0.1) for i in range(t)])
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
