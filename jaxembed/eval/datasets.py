"""Readers for the STS evaluation sets in SentEval's folder layout.

Layout (what SentEval's download script produces, and what SimCSE reads)::

    <data_dir>/downstream/STS/STS12-en-test/STS.input.<subset>.txt   s1 <TAB> s2
    <data_dir>/downstream/STS/STS12-en-test/STS.gs.<subset>.txt      one score a line
    ...                       STS16-en-test/
    <data_dir>/downstream/STS/STSBenchmark/sts-{train,dev,test}.csv
    <data_dir>/downstream/SICK/SICK_test_annotated.txt

``data_dir`` may be the folder holding ``downstream/``, ``downstream`` itself,
or a folder holding the task folders directly (the original releases, where
STS16 files are named ``STS2016.input.<subset>.txt``).

As SentEval does, a blank line in a gold file marks an unscored pair, which
is dropped (STS15, STS16), and every sentence is split on white space and
re-joined with single spaces (``" ".join(s.split())``).

Files must be UTF-8, and every gold score a finite number: anything else
raises ``ValueError`` naming ``FILE:LINE`` (SentEval would fail on the
former and silently score with NaN for the latter).

Scored pairs: STS12 3108, STS13 1500, STS14 3750, STS15 3000, STS16 1186,
STS-B test 1379, SICK-R test 4927.

Reference: Conneau & Kiela, SentEval (``senteval/sts.py``, ``senteval/sick.py``).
"""

from __future__ import annotations

import csv
import io
import math
import pathlib
from typing import NamedTuple

import numpy as np

from jaxembed.data.textfile import read_utf8

__all__ = [
    "STS_TASKS",
    "STS_SUBSETS",
    "StsSubset",
    "read_sts_subset",
    "read_stsb",
    "read_sick",
    "load_sts_task",
]

# The subsets SentEval evaluates for each year (STS13 without the licensed SMT set).
STS_SUBSETS: dict[str, tuple[str, ...]] = {
    "STS12": ("MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"),
    "STS13": ("FNWN", "headlines", "OnWN"),
    "STS14": ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"),
    "STS15": ("answers-forums", "answers-students", "belief", "headlines", "images"),
    "STS16": ("answer-answer", "headlines", "plagiarism", "postediting", "question-question"),
}
STS_TASKS: tuple[str, ...] = (*STS_SUBSETS, "STSBenchmark", "SICKRelatedness")


class StsSubset(NamedTuple):
    """One scored subset: ``name`` and aligned lists ``s1``, ``s2`` and float64 ``gold`` [n]."""

    name: str
    s1: list
    s2: list
    gold: np.ndarray


def _clean(sentence: str) -> str:
    return " ".join(sentence.split())


def _read_lines(path: pathlib.Path) -> list[str]:
    return read_utf8(path).splitlines()  # SentEval's split, so that line i pairs with gold i


def _gold(text: str, where: str) -> float:
    """A gold score as float; ``ValueError`` naming ``where`` (``FILE:LINE``) if not finite."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: gold score {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: gold score {text!r} is not a finite number")
    return value


def read_sts_subset(input_path, gold_path) -> tuple[list[str], list[str], np.ndarray]:
    """Read one ``STS.input.*`` / ``STS.gs.*`` file pair, dropping unscored pairs.

    Args:
        input_path: tab-separated sentence pairs, one a line (extra columns ignored).
        gold_path: one score a line, aligned with ``input_path``; blank = unscored.

    Returns:
        ``(s1, s2, gold)``: two lists of n sentences and a float64 array [n].
    """
    pairs = _read_lines(pathlib.Path(input_path))
    scores = [line.strip() for line in _read_lines(pathlib.Path(gold_path))]
    if len(pairs) != len(scores):
        raise ValueError(
            f"{input_path} has {len(pairs)} lines but {gold_path} has {len(scores)}; "
            "they must align"
        )
    s1, s2, gold = [], [], []
    for lineno, (pair, score) in enumerate(zip(pairs, scores), start=1):
        if not score:
            continue
        cols = pair.split("\t")
        if len(cols) < 2:
            raise ValueError(f"{input_path}:{lineno}: expected 's1<TAB>s2', got {pair[:80]!r}")
        gold.append(_gold(score, f"{gold_path}:{lineno}"))
        s1.append(_clean(cols[0]))
        s2.append(_clean(cols[1]))
    return s1, s2, np.asarray(gold, dtype=np.float64)


def _scored_pairs(rows, path, *, score: int, first: int, min_columns: int):
    """``(s1, s2, gold)`` from ``(line number, columns)`` rows, blank rows skipped.

    Column ``score`` is the gold score, columns ``first`` and ``first + 1`` the sentences.
    """
    s1, s2, gold = [], [], []
    for lineno, row in rows:
        if not any(c.strip() for c in row):
            continue
        if len(row) < min_columns:
            raise ValueError(
                f"{path}:{lineno}: expected at least {min_columns} tab-separated columns, "
                f"got {len(row)}"
            )
        gold.append(_gold(row[score], f"{path}:{lineno}"))
        s1.append(_clean(row[first]))
        s2.append(_clean(row[first + 1]))
    return s1, s2, np.asarray(gold, dtype=np.float64)


def read_stsb(path) -> tuple[list[str], list[str], np.ndarray]:
    """Read one STS Benchmark csv file (``sts-train.csv``, ``sts-dev.csv`` or ``sts-test.csv``).

    Tab-separated, no quoting (``csv.QUOTE_NONE``); 1-based column 5 is the score
    and columns 6-7 the sentences. The original release has extra source columns
    on some lines, which are ignored.

    Returns:
        ``(s1, s2, scores)``: two lists of n sentences and a float64 array [n] in [0, 5].

    Example:
        >>> path = "data/senteval/downstream/STS/STSBenchmark/sts-dev.csv"
        >>> s1, s2, y = read_stsb(path)  # doctest: +SKIP
        >>> len(s1), y[:2]  # doctest: +SKIP
        (1500, array([5. , 4.75]))
    """
    rows = csv.reader(io.StringIO(read_utf8(path), newline=""), delimiter="\t",
                      quoting=csv.QUOTE_NONE)
    return _scored_pairs(enumerate(rows, start=1), path, score=4, first=5, min_columns=7)


def read_sick(path) -> tuple[list[str], list[str], np.ndarray]:
    """Read a SICK file: a header line, then pair_ID, sentence_A, sentence_B, relatedness_score, ...

    Returns:
        ``(s1, s2, scores)`` with relatedness scores (1-5) as float64 [n].
    """
    lines = _read_lines(pathlib.Path(path))
    rows = ((lineno, line.split("\t")) for lineno, line in enumerate(lines[1:], start=2))
    return _scored_pairs(rows, path, score=3, first=1, min_columns=4)


def _find_dir(data_dir: pathlib.Path, *relatives: str) -> pathlib.Path:
    tried = []
    for base in (data_dir / "downstream", data_dir):
        for rel in relatives:
            candidate = base / rel
            tried.append(str(candidate))
            if candidate.is_dir():
                return candidate
    raise FileNotFoundError("none of these folders exists: " + ", ".join(tried))


def _find_sts_file(folder: pathlib.Path, kind: str, subset: str) -> pathlib.Path:
    exact = folder / f"STS.{kind}.{subset}.txt"
    if exact.is_file():
        return exact
    matches = sorted(folder.glob(f"STS*.{kind}.{subset}.txt"))  # e.g. STS2016.input.headlines.txt
    if len(matches) != 1:
        raise FileNotFoundError(
            f"expected one file STS*.{kind}.{subset}.txt in {folder}, found {len(matches)}"
        )
    return matches[0]


def load_sts_task(data_dir, task: str) -> list[StsSubset]:
    """Load the scored pairs of one task as a list of subsets.

    Args:
        data_dir: folder holding ``downstream/`` (or ``downstream`` itself, or the task folders).
        task: one of ``STS12`` .. ``STS16``, ``STSBenchmark`` (test split),
            ``SICKRelatedness`` (test split).

    Returns:
        ``[StsSubset(name, s1, s2, gold), ...]``: the year's subsets in SentEval's
        order for STS12-16, a single ``"test"`` subset for STS-B and SICK-R.

    Example:
        >>> [(s.name, len(s.gold)) for s in load_sts_task(d, "STS13")]  # doctest: +SKIP
        [('FNWN', 189), ('headlines', 750), ('OnWN', 561)]
    """
    data_dir = pathlib.Path(data_dir)
    if task in STS_SUBSETS:
        folder = _find_dir(data_dir, f"STS/{task}-en-test", f"{task}-en-test")
        out = []
        for subset in STS_SUBSETS[task]:
            s1, s2, gold = read_sts_subset(
                _find_sts_file(folder, "input", subset), _find_sts_file(folder, "gs", subset)
            )
            out.append(StsSubset(subset, s1, s2, gold))
        return out
    if task == "STSBenchmark":
        folder = _find_dir(data_dir, "STS/STSBenchmark", "STSBenchmark")
        return [StsSubset("test", *read_stsb(folder / "sts-test.csv"))]
    if task == "SICKRelatedness":
        folder = _find_dir(data_dir, "SICK")
        return [StsSubset("test", *read_sick(folder / "SICK_test_annotated.txt"))]
    raise ValueError(f"unknown STS task {task!r}; expected one of {', '.join(STS_TASKS)}")
