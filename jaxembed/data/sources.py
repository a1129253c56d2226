"""Training corpora read into memory as rows of columns, with bad lines counted.

Every reader returns a :class:`Corpus`: ``columns`` names (text columns first,
then float columns), ``rows`` (tuples in that order) and ``stats`` (how many
records were read, skipped as empty, skipped as non-UTF-8 or malformed, and
truncated for being over ``max_chars`` characters). A bad record never raises.

Formats
    * ``lines``: one sentence per line (unsupervised SimCSE / WhitenedCSE,
      e.g. SimCSE's ``wiki1m_for_simcse.txt``) -> columns ``("text",)``.
    * ``triplets``: CSV/TSV with a header containing ``sent0,sent1[,hard_neg]``
      (SimCSE's ``nli_for_simcse.csv``) -> ``("sent0", "sent1"[, "hard_neg"])``.
    * ``pairs_jsonl``: ``{"sent0":.., "sent1":.., "teacher": float | [float],
      "label": optional float}`` per line (DSE distillation)
      -> ``("sent0", "sent1", "teacher_0".., ["label"])``.
    * ``snli``: SentEval-format SNLI folder (``s1.SPLIT``, ``s2.SPLIT``,
      ``labels.SPLIT``) -> SimCSE triplets (premise, entailment, contradiction).
    * ``tfds``: ``tfds:NAME[/CONFIG]:SPLIT`` read through ArrayRecord with
      ``builder.as_data_source()`` (no TensorFlow), see :mod:`jaxembed.data.tfds_source`.

Example::

    corpus = read_source("wiki1m_for_simcse.txt")
    corpus.columns, len(corpus), corpus.stats["skipped_empty"]
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import pathlib
from typing import Iterable

STAT_KEYS = ("read", "kept", "skipped_empty", "skipped_invalid", "truncated")


@dataclasses.dataclass
class Corpus:
    columns: tuple[str, ...]
    rows: list[tuple]
    stats: dict[str, int]
    num_text_columns: int

    def __len__(self) -> int:
        return len(self.rows)


def _new_stats() -> dict[str, int]:
    return {k: 0 for k in STAT_KEYS}


def _clean(text: str | None, stats: dict, *, max_chars: int) -> str | None:
    """Strip; ``None`` for empty; truncate to ``max_chars`` (counted once per record)."""
    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    if len(text) > max_chars:
        stats["_truncated_here"] = 1
        text = text[:max_chars]
    return text


def _finish_record(stats: dict) -> None:
    if stats.pop("_truncated_here", 0):
        stats["truncated"] += 1


def _decoded_lines(path: pathlib.Path, stats: dict) -> Iterable[str | None]:
    """Yield each line decoded as UTF-8, or ``None`` (counted) when it is not."""
    with open(path, "rb") as f:
        for raw in f:
            stats["read"] += 1
            try:
                yield raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                stats["skipped_invalid"] += 1
                yield None


def read_lines(path, *, max_chars: int = 2000) -> Corpus:
    """One sentence per line; empty and non-UTF-8 lines skipped, long ones truncated."""
    stats, rows = _new_stats(), []
    for line in _decoded_lines(pathlib.Path(path), stats):
        if line is None:
            continue
        text = _clean(line, stats, max_chars=max_chars)
        if text is None:
            stats["skipped_empty"] += 1
            continue
        _finish_record(stats)
        rows.append((text,))
    stats["kept"] = len(rows)
    return Corpus(("text",), rows, stats, 1)


def read_triplets(path, *, max_chars: int = 2000) -> Corpus:
    """CSV (``,``) or TSV (``.tsv``/``.tab``: tab) with header ``sent0,sent1[,hard_neg]``."""
    path = pathlib.Path(path)
    delimiter = "\t" if path.suffix in (".tsv", ".tab") else ","
    stats = _new_stats()
    lines = [line for line in _decoded_lines(path, stats)]
    good = [line for line in lines if line is not None]
    reader = csv.reader(io.StringIO("\n".join(good)), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        return Corpus(("sent0", "sent1"), [], stats, 2)
    stats["read"] -= 1  # the header is not a record
    header = [h.strip() for h in header]
    wanted = [c for c in ("sent0", "sent1", "hard_neg") if c in header]
    if wanted[:2] != ["sent0", "sent1"]:
        raise ValueError(f"{path}: header must name sent0,sent1[,hard_neg]; got {header}")
    idx = [header.index(c) for c in wanted]
    rows = []
    for fields in reader:
        if len(fields) < len(header):
            stats["skipped_invalid"] += 1
            continue
        texts = [_clean(fields[i], stats, max_chars=max_chars) for i in idx]
        if any(t is None for t in texts):
            stats.pop("_truncated_here", None)
            stats["skipped_empty"] += 1
            continue
        _finish_record(stats)
        rows.append(tuple(texts))
    stats["kept"] = len(rows)
    return Corpus(tuple(wanted), rows, stats, len(wanted))


def read_pairs_jsonl(path, *, max_chars: int = 2000) -> Corpus:
    """JSONL ``{"sent0", "sent1", "teacher": float | list[float], "label"?}``.

    All records must carry the same number of teacher values and either all or
    none a ``label``; records that do not (or are not JSON) are skipped as invalid.
    """
    stats, rows = _new_stats(), []
    n_teacher, has_label = None, None
    for line in _decoded_lines(pathlib.Path(path), stats):
        if line is None:
            continue
        if not line.strip():
            stats["skipped_empty"] += 1
            continue
        try:
            rec = json.loads(line)
            teacher = rec["teacher"]
            teacher = [float(t) for t in (teacher if isinstance(teacher, list) else [teacher])]
            label = [float(rec["label"])] if "label" in rec else []
        except (ValueError, KeyError, TypeError):
            stats["skipped_invalid"] += 1
            continue
        if n_teacher is None:
            n_teacher, has_label = len(teacher), bool(label)
        if len(teacher) != n_teacher or bool(label) != has_label:
            stats["skipped_invalid"] += 1
            continue
        texts = [_clean(rec.get(k), stats, max_chars=max_chars) for k in ("sent0", "sent1")]
        if any(t is None for t in texts):
            stats.pop("_truncated_here", None)
            stats["skipped_empty"] += 1
            continue
        _finish_record(stats)
        rows.append((*texts, *teacher, *label))
    stats["kept"] = len(rows)
    columns = ("sent0", "sent1", *[f"teacher_{i}" for i in range(n_teacher or 1)])
    if has_label:
        columns += ("label",)
    return Corpus(columns, rows, stats, 2)


def snli_triplets(directory, split: str, *, max_chars: int = 2000) -> Corpus:
    """SimCSE triplets from SentEval-format SNLI: (premise, entailment, contradiction).

    Hypotheses are grouped by premise in file order; the k-th entailment
    hypothesis of a premise is paired with its k-th contradiction hypothesis
    (premises lacking either label give no triplet; neutral is unused), as the
    SimCSE ``nli_for_simcse.csv`` construction does.
    """
    directory = pathlib.Path(directory)
    stats = _new_stats()
    cols = []
    for name in ("s1", "s2", "labels"):
        cols.append(list(_decoded_lines(directory / f"{name}.{split}", stats)))
    if not len(cols[0]) == len(cols[1]) == len(cols[2]):
        raise ValueError(f"{directory}: s1/s2/labels.{split} have {[len(c) for c in cols]} lines")
    stats["read"] = len(cols[0])
    groups: dict[str, dict[str, list[str]]] = {}
    for s1, s2, label in zip(*cols):
        if s1 is None or s2 is None or label is None:
            continue  # already counted as invalid
        p = _clean(s1, stats, max_chars=max_chars)
        h = _clean(s2, stats, max_chars=max_chars)
        _finish_record(stats)
        if p is None or h is None:
            stats["skipped_empty"] += 1
            continue
        groups.setdefault(p, {"entailment": [], "contradiction": []})
        if label.strip() in ("entailment", "contradiction"):
            groups[p][label.strip()].append(h)
    rows = [(p, e, c) for p, g in groups.items() for e, c in zip(g["entailment"], g["contradiction"])]
    stats["kept"] = len(rows)
    return Corpus(("sent0", "sent1", "hard_neg"), rows, stats, 3)


def read_source(spec: str, *, data_format: str = "auto", max_chars: int = 2000,
                tfds_data_dir: str = "") -> Corpus:
    """Dispatch on ``data_format`` (``auto``: by prefix/extension).

    ``snli:DIR:SPLIT`` -> :func:`snli_triplets`; ``tfds:NAME/CONFIG:SPLIT`` ->
    TFDS; ``.csv``/``.tsv`` -> triplets; ``.jsonl`` -> pairs; otherwise lines.
    """
    fmt = data_format
    if fmt == "auto":
        if spec.startswith("snli:"):
            fmt = "snli"
        elif spec.startswith("tfds:"):
            fmt = "tfds"
        elif spec.endswith((".csv", ".tsv", ".tab")):
            fmt = "triplets"
        elif spec.endswith(".jsonl"):
            fmt = "pairs_jsonl"
        else:
            fmt = "lines"
    if fmt == "snli":
        _, directory, split = spec.rsplit(":", 2) if spec.startswith("snli:") else ("", *spec.rsplit(":", 1))
        return snli_triplets(directory, split, max_chars=max_chars)
    if fmt == "tfds":
        from jaxembed.data.tfds_source import read_tfds

        return read_tfds(spec, data_dir=tfds_data_dir or None, max_chars=max_chars)
    reader = {"lines": read_lines, "triplets": read_triplets, "pairs_jsonl": read_pairs_jsonl}[fmt]
    return reader(spec, max_chars=max_chars)
