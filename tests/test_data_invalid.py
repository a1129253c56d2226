"""Bad training data: skipped and counted with FILE:LINE, or refused when the file is not
UTF-8 or mostly invalid (never trained on, never an AttributeError)."""

from __future__ import annotations

import json
import math

import pytest

from jaxembed.data.corpus import MAX_EXAMPLES, MAX_INVALID_FRACTION
from jaxembed.data.sources import read_lines, read_pairs_jsonl, read_source
from jaxembed.data.textfile import NotUtf8Error

SENTENCES = [f"The sentence number {i} is here." for i in range(40)]


def _record(i, **over):
    rec = {"sent0": f"a{i} b", "sent1": f"c{i} d", "teacher": 0.25 * (i % 4), "label": 1.0}
    rec.update(over)
    return json.dumps(rec)


def test_jsonl_bad_fields_skipped_and_named_by_line(tmp_path):
    good = [_record(i) for i in range(12)]
    bad = {  # 1-based line -> (text, what the problem must say)
        3: ('{"sent0": 5, "sent1": "x", "teacher": 0.1, "label": 1}', "'sent0' is int"),
        5: ('{"sent0": "x", "sent1": ["y"], "teacher": 0.1, "label": 1}', "'sent1' is list"),
        7: (_record(0, teacher=float("nan")), "'teacher' value nan is not finite"),
        9: (_record(0, teacher=[0.5, float("inf")]), "'teacher' value inf is not finite"),
        11: (_record(0, label=float("-inf")), "'label' value -inf is not finite"),
        13: ('["sent0", "sent1"]', "a JSON object expected, got list"),
        14: (_record(0, teacher="0.5"), "'teacher' holds str"),
    }
    lines = list(good)
    for lineno in sorted(bad):
        lines.insert(lineno - 1, bad[lineno][0])
    assert "NaN" in lines[6] and "Infinity" in lines[8]  # what json.dumps writes for them
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match=rf"p\.jsonl: skipped {len(bad)} invalid records") as w:
        c = read_pairs_jsonl(path)
    assert len(c) == len(good) and c.stats["skipped_invalid"] == len(bad)
    assert all(math.isfinite(v) for row in c.rows for v in row[2:])
    assert len(c.problems) == MAX_EXAMPLES  # the first few, not all
    for problem, lineno in zip(c.problems, sorted(bad)):
        assert problem.startswith(f"{path}:{lineno}: ") and bad[lineno][1] in problem, problem
        assert problem in str(w[0].message)


def test_jsonl_mostly_invalid_is_refused(tmp_path):
    n = 10
    n_bad = int(MAX_INVALID_FRACTION * n)  # exactly half: still accepted
    lines = [_record(i, sent0=i) if i < n_bad else _record(i) for i in range(n)]
    (tmp_path / "half.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning):
        assert len(read_pairs_jsonl(tmp_path / "half.jsonl")) == n - n_bad
    lines[n_bad] = _record(0, teacher=float("nan"))
    (tmp_path / "most.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"most\.jsonl: {n_bad + 1} of {n} records are invalid") \
            as e:
        read_source(str(tmp_path / "most.jsonl"))
    assert "most.jsonl:1: 'sent0' is int 0, not a string" in str(e.value)
    assert "kept 4" in str(e.value)  # the stats are in the message


@pytest.mark.parametrize("encoding, found", [
    ("utf-16", "UTF-16LE byte-order mark"),      # Python writes a BOM
    ("utf-16-be", "NUL byte on line 1"),         # no BOM
    ("utf-32", "UTF-32LE byte-order mark"),
])
def test_utf16_and_utf32_files_are_refused(tmp_path, encoding, found):
    path = tmp_path / "c.txt"
    path.write_bytes("\n".join(SENTENCES).encode(encoding))
    with pytest.raises(NotUtf8Error, match=found) as e:
        read_lines(path)
    assert str(path) in str(e.value) and "iconv" in str(e.value)


def test_binary_and_latin1_files_are_refused(tmp_path, rng):
    blob = tmp_path / "model.bin"
    blob.write_bytes(b"PK\x03\x04" + rng.integers(0, 256, size=4000, dtype="uint8").tobytes())
    with pytest.raises(NotUtf8Error, match="NUL byte"):
        read_source(str(blob))
    # latin-1 without NUL bytes: every line with an accent fails to decode
    latin = tmp_path / "latin.tsv"
    rows = [f"café {i}\tnaïve {i}" for i in range(9)]
    latin.write_bytes(("sent0\tsent1\n" + "\n".join(rows) + "\nplain\tascii\n").encode("latin-1"))
    with pytest.raises(NotUtf8Error, match=r"9 of 10 lines do not decode as UTF-8.*iconv"):
        read_source(str(latin))


def test_utf8_bom_is_dropped_and_nul_lines_later_are_invalid(tmp_path):
    path = tmp_path / "c.txt"
    body = "\n".join(SENTENCES).encode()
    # the NUL byte lies beyond the 64 KiB sniffed at the start: only its line is skipped
    path.write_bytes(b"\xef\xbb\xbf" + body + b"\n" + b"x" * 70000 + b"\nnul\x00inside\n")
    with pytest.warns(UserWarning, match=f"c.txt:{len(SENTENCES) + 2}: not UTF-8"):
        c = read_lines(path, max_chars=100_000)
    assert c.rows[0] == (SENTENCES[0],) and c.stats["skipped_invalid"] == 1
    assert c.stats["kept"] == len(SENTENCES) + 1
