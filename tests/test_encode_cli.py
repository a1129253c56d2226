"""``jaxembed encode``: shards equal ``SentenceTransformer.encode``, bad lines are named,
a killed run resumes to the same bytes, and every failure is one line with exit 1 or 2."""

from __future__ import annotations

import errno
import json
import pathlib

import jax
import numpy as np
import pytest

from jaxembed.bulk import encode as bulk_encode
from jaxembed.bulk import shards
from jaxembed.bulk.inputs import stream_lines
from jaxembed.bulk.shards import load_embeddings, read_manifest, row_lines
from jaxembed.cli import main
from jaxembed.models import inference
from jaxembed.models.encoder import Encoder

pytestmark = pytest.mark.slow  # a long file: runs first under -n 2 (tests/conftest.py)

BAD_TEXT = {  # line content -> reason recorded (plain-text input)
    b"": "empty",
    b"   \t": "empty",
    b"caf\xe9 latin-1": "not UTF-8",
    b"\xc3\x28 bad sequence": "not UTF-8",
}


def _wiki(shared_data, n):
    path = shared_data / "corpora" / "wiki1m" / "wiki1m_for_simcse.prefix.txt"
    with open(path, encoding="utf-8") as f:
        return [next(f).rstrip("\n") for _ in range(n)]


def _corpus(path, good, bad_at):
    """Write ``good`` texts with ``BAD_TEXT`` lines inserted at the 1-based ``bad_at`` lines;
    return {line: reason}."""
    lines = [t.encode("utf-8") for t in good]
    bad_lines = list(BAD_TEXT.items())
    expected = {}
    for k, lineno in enumerate(sorted(bad_at)):
        raw, reason = bad_lines[k % len(bad_lines)]
        lines.insert(lineno - 1, raw)
        expected[lineno] = reason
    path.write_bytes(b"\n".join(lines) + b"\n")
    return expected


def _st_encode(minilm_path, texts, **kwargs):
    from _optional import needs_torch

    needs_torch()  # sentence-transformers requires torch
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path), device="cpu").encode(
        texts, batch_size=64, **kwargs)


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(pathlib.Path(folder).iterdir())}


def test_stream_lines_names_bad_lines_and_resumes_at_any_offset(tmp_path):
    path = tmp_path / "in.jsonl"
    records = [
        b'{"text": "a dog runs"}',
        b'{"text": "two cats", "id": 7}',
        b'{"text": ',
        b'["text"]',
        b'{"title": "no text"}',
        b'{"text": 3}',
        b'{"text": "  "}',
        b'{"text": "lone \\udc80 surrogate"}',
        b'',
        b'{"text": "caf\xe9"}',
        b'{"text": "last one"}\r',
    ]
    path.write_bytes(b"\n".join(records))  # no newline after the last line
    got = list(stream_lines(path, field="text"))
    assert [(r.line, r.text) for r in got if r.text] == [
        (1, "a dog runs"), (2, "two cats"), (11, "last one")]
    assert {r.line: r.reason for r in got if r.text is None} == {
        3: "not valid JSON", 4: "not a JSON object (list)", 5: "no field 'text'",
        6: "field 'text' is int, not a string", 7: "empty",
        8: "field 'text' is not valid Unicode", 9: "empty", 10: "not UTF-8"}
    assert got[-1].end == path.stat().st_size
    for k in range(len(got)):  # continuing after any line gives the rest, same numbers
        start = got[k - 1] if k else None
        rest = list(stream_lines(path, field="text", offset=start.end if start else 0,
                                 first_line=k + 1))
        assert rest == got[k:]


def test_shards_equal_sentence_transformers_with_bad_lines_mapped(
        minilm_path, shared_data, tmp_path, capsys):
    """150 wiki1m sentences + 6 bad lines, on the 8 (simulated) local devices."""
    good = _wiki(shared_data, 150)
    bad = _corpus(tmp_path / "in.txt", good, bad_at=range(1, 150, 25))
    out = tmp_path / "out"
    rc = main(["encode", "--model", str(minilm_path), "--input", str(tmp_path / "in.txt"),
               "--output", str(out), "--batch-size", "64", "--rows-per-shard", "64"])
    err = capsys.readouterr().err
    assert rc == 0, err
    manifest = read_manifest(out)
    assert manifest["complete"] and manifest["total_rows"] == 150
    assert [s["rows"] for s in manifest["shards"]] == [64, 64, 22]
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json", "shard-00000.npy", "shard-00001.npy", "shard-00002.npy"]
    s = manifest["settings"]
    assert (s["pooling"], s["normalize"], s["dim"], s["dtype"], s["max_length"]) == (
        "mean", True, 384, "float32", 256)
    assert s["devices"] == f"{len(jax.local_devices())} x cpu" == "8 x cpu"
    assert {b["line"]: b["reason"] for b in manifest["bad_lines"]} == bad
    assert manifest["lines_read"] == 156
    lines = (tmp_path / "in.txt").read_bytes().split(b"\n")
    rows = row_lines(manifest)
    assert [lines[i - 1].decode() for i in rows] == good
    x = load_embeddings(out)
    assert x.dtype == np.float32 and x.shape == (150, 384)
    np.testing.assert_allclose(x, _st_encode(minilm_path, good), atol=1e-5, rtol=0)
    assert "sentences/s" in err and "6 bad line(s) skipped" in err
    assert f"in.txt:{min(bad)}: {bad[min(bad)]}" in err


def test_jsonl_field_and_prompt_equal_sentence_transformers(tiny_bert_dir, shared_data, tmp_path):
    """On a plain Hugging Face folder (a random tiny BERT: mean pooling, no normalisation in
    both libraries), to keep compilation cheap."""
    good = _wiki(shared_data, 40)
    path = tmp_path / "in.jsonl"
    rows = [json.dumps({"id": i, "text": t}) for i, t in enumerate(good)]
    rows.insert(5, json.dumps({"id": "x", "body": "no text field"}))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["encode", "--model", str(tiny_bert_dir), "--input", str(path), "--output",
                 str(out), "--field", "text", "--prompt", "query: ", "--batch-size", "64"]) == 0
    manifest = read_manifest(out)
    assert manifest["bad_lines"] == [{"line": 6, "reason": "no field 'text'"}]
    assert manifest["settings"]["prompt"] == "query: "
    want = _st_encode(tiny_bert_dir, good, prompt="query: ")
    np.testing.assert_allclose(load_embeddings(out), want, atol=1e-5, rtol=0)

    # without --prompt the manifest records the prompt applied: the folder's default one
    folder = tmp_path / "prompted"
    Encoder.from_pretrained(tiny_bert_dir, prompts={"query": "query: "},
                            default_prompt_name="query").save_pretrained(folder)
    assert main(["encode", "--model", str(folder), "--input", str(path), "--output",
                 str(tmp_path / "default"), "--field", "text", "--batch-size", "64"]) == 0
    assert read_manifest(tmp_path / "default")["settings"]["prompt"] == "query: "
    np.testing.assert_allclose(load_embeddings(tmp_path / "default"), want, atol=1e-5, rtol=0)


class _Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing on the way catches it."""


def _run(enc, path, out, **kw):
    return bulk_encode.encode_file(enc, path, out, model="tiny", batch_size=8,
                                   rows_per_shard=16, max_length=32, **kw)


@pytest.mark.parametrize("killed_at", [2, 4])
def test_killed_run_resumes_to_identical_bytes(tiny_bert_dir, shared_data, tmp_path,
                                               monkeypatch, capsys, killed_at):
    """Kill after shard ``killed_at - 2`` is complete and the next shard file is already in
    place but not yet in the manifest (the widest window), plus a temporary file of an
    unfinished write; the resumed folder must equal an uninterrupted run's, byte for byte."""
    from jaxembed.models.encoder import Encoder

    enc = Encoder.from_pretrained(tiny_bert_dir)
    path = tmp_path / "in.txt"
    _corpus(path, _wiki(shared_data, 70), bad_at=[3, 20, 40, 74])
    _run(enc, path, tmp_path / "whole")

    real_write, calls = shards._write_manifest, []

    def dying_write(output, manifest):
        calls.append(1)
        if len(calls) == killed_at:  # the manifest after shard killed_at - 2's file
            leftover = f".{shards.shard_file(killed_at - 1)}.tmp-dead"  # a write cut short
            (output / leftover).write_bytes(b"partial")
            raise _Killed
        real_write(output, manifest)

    monkeypatch.setattr(shards, "_write_manifest", dying_write)
    with pytest.raises(_Killed):
        _run(enc, path, tmp_path / "resumed")
    monkeypatch.setattr(shards, "_write_manifest", real_write)
    assert len(read_manifest(tmp_path / "resumed")["shards"]) == killed_at - 2
    assert (tmp_path / "resumed" / shards.shard_file(killed_at - 2)).exists()  # not listed
    capsys.readouterr()
    _run(enc, path, tmp_path / "resumed")
    if killed_at > 2:
        assert f"resuming after shard {killed_at - 3}" in capsys.readouterr().err
    assert _files(tmp_path / "resumed") == _files(tmp_path / "whole")
    assert read_manifest(tmp_path / "whole")["total_rows"] == 70


def test_resume_refuses_other_settings_and_foreign_folders(tiny_bert_dir, shared_data,
                                                           tmp_path, capsys):
    path, out = tmp_path / "in.txt", tmp_path / "out"
    path.write_text("\n".join(_wiki(shared_data, 20)) + "\n", encoding="utf-8")
    base = ["encode", "--model", str(tiny_bert_dir), "--input", str(path), "--output", str(out)]
    assert main(base + ["--rows-per-shard", "8"]) == 0
    before = _files(out)
    capsys.readouterr()
    assert main(base + ["--rows-per-shard", "8"]) == 0  # complete: nothing to do
    assert "already complete: 20 rows" in capsys.readouterr().err and _files(out) == before
    assert main(base + ["--rows-per-shard", "8", "--batch-size", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "batch_size: 128 -> 4" in err and "\n" not in err
    assert _files(out) == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(base[:-1] + [str(tmp_path / "other")]) == 2
    assert "not empty and has no manifest.json" in capsys.readouterr().err


def test_errors_are_one_line_with_status(tiny_bert_dir, tmp_path, monkeypatch, capsys):
    def fails(argv, status, *needles):
        assert main(["encode"] + argv) == status
        lines = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in lines if line.startswith("error")]
        assert errors == lines[-1:] and lines[-1].startswith("error: "), lines  # one line, last
        err = lines[-1]
        for needle in needles:
            assert needle in err, err

    model = ["--model", str(tiny_bert_dir)]
    good = tmp_path / "good.txt"
    good.write_text("one\ntwo\n", encoding="utf-8")
    fails(model + ["--input", str(tmp_path / "nope.txt"), "--output", str(tmp_path / "o1")],
          2, "--input", "nope.txt")
    (tmp_path / "u16.txt").write_bytes("hello\n".encode("utf-16"))
    fails(model + ["--input", str(tmp_path / "u16.txt"), "--output", str(tmp_path / "o2")],
          2, "UTF-16", "iconv")
    fails(["--model", str(tmp_path / "no_model"), "--input", str(good),
           "--output", str(tmp_path / "o3")], 2, "--model")
    fails(model + ["--input", str(good), "--output", str(tmp_path / "o3"), "--max-length",
                   "100000"], 2, "--max-length 100000 exceeds the model's 128 positions")
    (tmp_path / "blank.txt").write_bytes(b"\n  \n\xff\n")
    fails(model + ["--input", str(tmp_path / "blank.txt"), "--output", str(tmp_path / "o4")],
          1, "no text to encode", "3 lines")
    assert [b["reason"] for b in read_manifest(tmp_path / "o4")["bad_lines"]] == [
        "empty", "empty", "not UTF-8"]

    def disk_full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(shards, "atomic_write_bytes", disk_full)
    fails(model + ["--input", str(good), "--output", str(tmp_path / "o5")],
          1, "No space left on device", "shard-00000.npy")
    with pytest.raises(SystemExit) as e:
        main(["encode"] + model + ["--input", str(good), "--output", "x", "--batch-size", "0"])
    assert e.value.code == 2


def test_data_parallel_encode_equals_one_device(tiny_bert_dir, shared_data):
    """The ``devices=`` hook of ``Encoder.encode``: rows split over 8 (and 3) devices, batches
    whose row count no device count divides, same rows as on one device."""
    from jaxembed.models.encoder import Encoder

    enc = Encoder.from_pretrained(tiny_bert_dir)
    texts = [t[:60] for t in _wiki(shared_data, 19)]  # 19 rows: batches of 8, 8, 3
    kw = dict(batch_size=8, max_length=32)
    one = enc.encode(texts, **kw)
    for devices in (jax.local_devices(), jax.local_devices()[:3]):
        n = enc.precompile(texts, devices=devices, **kw)
        step = inference.encode_step(enc, devices=devices)
        before = step.traces
        many = enc.encode(texts, devices=devices, **kw)
        assert n >= 1 and step.traces == before  # precompile covered these shapes
        # rows are independent; only float32 rounding of other per-device row counts differs
        np.testing.assert_allclose(many, one, atol=1e-6, rtol=0)
        print(f"{len(devices)} devices: max |diff| {np.abs(many - one).max():.2e}")
