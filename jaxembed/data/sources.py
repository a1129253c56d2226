"""Training corpora read into memory as rows of columns, with bad records counted.

Every reader returns a :class:`~jaxembed.data.corpus.Corpus`: ``columns``
names (text columns first, then float columns), ``rows`` (tuples in that
order), ``stats`` (records read, kept, skipped as empty, skipped as invalid,
truncated to ``max_chars`` characters) and ``problems`` (the first invalid
records by ``FILE:LINE`` and reason). A bad record is skipped, counted and
reported in one warning; a file that is not UTF-8 (a UTF-16/32 byte-order
mark, NUL bytes, or a majority of undecodable lines) or whose records are
mostly invalid is refused with a ``ValueError`` that says so (see
:mod:`jaxembed.data.corpus` for the threshold and :mod:`jaxembed.data.textfile`).

Formats
    * ``lines``: one sentence per line (unsupervised SimCSE / WhitenedCSE,
      e.g. SimCSE's ``wiki1m_for_simcse.txt``) -> columns ``("text",)``.
    * ``triplets``: CSV/TSV with a header containing ``sent0,sent1[,hard_neg]``
      (SimCSE's ``nli_for_simcse.csv``) -> ``("sent0", "sent1"[, "hard_neg"])``.
    * ``pairs_jsonl``: ``{"sent0":.., "sent1":.., "teacher": float | [float],
      "label": optional float}`` per line (DSE distillation)
      -> ``("sent0", "sent1", "teacher_0".., ["label"])``.
    * ``retrieval_jsonl``: ``{"query", "positive", "negatives": [..], "instruction"?}`` per
      line (retrieval / LLM-embedder training, :func:`read_retrieval_jsonl`)
      -> ``("query", "positive", "negative_0", .., "negative_{K-1}")``.
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
import json
import math
import pathlib
from typing import Iterator

from jaxembed.data.corpus import STAT_KEYS, Corpus, Tally, clean_texts
from jaxembed.data.textfile import utf8_lines

__all__ = ["STAT_KEYS", "Corpus", "read_lines", "read_triplets", "read_pairs_jsonl",
           "read_retrieval_jsonl", "snli_triplets", "read_source", "QUERY_TEMPLATE"]

QUERY_TEMPLATE = "Instruct: {task}\nQuery:"  # Qwen3-Embedding's (e5-mistral adds a space)


def read_lines(path, *, max_chars: int = 2000) -> Corpus:
    """One sentence per line; empty and non-UTF-8 lines skipped, long ones truncated."""
    tally, rows = Tally(path), []
    for lineno, line in utf8_lines(path):
        tally.read()
        if line is None:
            tally.not_utf8(f"{path}:{lineno}")
            continue
        texts, truncated = clean_texts([line], max_chars=max_chars)
        if texts is None:
            tally.empty()
            continue
        tally.keep(truncated=truncated)
        rows.append(tuple(texts))
    return tally.corpus(("text",), rows, num_text_columns=1)


def read_triplets(path, *, max_chars: int = 2000) -> Corpus:
    """CSV (``,``) or TSV (``.tsv``/``.tab``: tab) with header ``sent0,sent1[,hard_neg]``.

    A quoted field may span lines; a record is named by the line it starts on.
    """
    path = pathlib.Path(path)
    delimiter = "\t" if path.suffix in (".tsv", ".tab") else ","
    tally = Tally(path)
    line_numbers: list[int] = []  # file line of each line handed to the csv reader

    def decodable():
        for lineno, text in utf8_lines(path):
            if text is None:
                tally.read()
                tally.not_utf8(f"{path}:{lineno}")
                continue
            line_numbers.append(lineno)
            yield text + "\n"

    reader = csv.reader(decodable(), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        return tally.corpus(("sent0", "sent1"), [], num_text_columns=2)
    header = [h.strip() for h in header]
    wanted = [c for c in ("sent0", "sent1", "hard_neg") if c in header]
    if wanted[:2] != ["sent0", "sent1"]:
        raise ValueError(f"{path}:{line_numbers[0]}: header must name sent0,sent1[,hard_neg]; "
                         f"got {header}")
    idx = [header.index(c) for c in wanted]
    rows = []
    while True:
        first = reader.line_num  # index in line_numbers of the record's first line
        try:
            fields = next(reader, None)
        except csv.Error as e:
            tally.read()
            tally.invalid(f"{path}:{line_numbers[first]}", f"CSV error: {e}")
            continue
        if fields is None:
            break
        tally.read()
        where = f"{path}:{line_numbers[first]}"
        if not fields:
            tally.empty()
            continue
        if len(fields) < len(header):
            tally.invalid(where, f"{len(fields)} fields, the header has {len(header)}")
            continue
        texts, truncated = clean_texts([fields[i] for i in idx], max_chars=max_chars)
        if texts is None:
            tally.empty()
            continue
        tally.keep(truncated=truncated)
        rows.append(tuple(texts))
    return tally.corpus(wanted, rows, num_text_columns=len(wanted))


def _finite_numbers(rec: dict, key: str) -> list[float]:
    """``rec[key]`` (a JSON number or a non-empty list of them) as floats, else ``ValueError``."""
    value = rec[key]
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError(f"'{key}' is an empty list")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"'{key}' holds {type(v).__name__} {v!r}, not a number")
        if not math.isfinite(v):
            raise ValueError(f"'{key}' value {v} is not finite")
        out.append(float(v))
    return out


def _json_record(line: str, required: tuple[str, ...], strings: tuple[str, ...]) -> dict:
    """One JSONL line as an object holding the ``required`` keys, with ``strings`` (those
    present) strings; ``ValueError`` saying what is wrong."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e})") from None
    if not isinstance(rec, dict):
        raise ValueError(f"a JSON object expected, got {type(rec).__name__}")
    missing = [k for k in required if k not in rec]
    if missing:
        raise ValueError(f"no {', '.join(repr(k) for k in missing)}")
    for k in strings:
        if k in rec and not isinstance(rec[k], str):
            raise ValueError(f"'{k}' is {type(rec[k]).__name__} {rec[k]!r}, not a string")
    return rec


def _jsonl_lines(path, tally: Tally) -> Iterator[tuple[str, str]]:
    """``("FILE:LINE", line)`` for every non-empty UTF-8 line of ``path``; ``tally`` counts
    every line read and the undecodable and empty ones."""
    for lineno, line in utf8_lines(path):
        tally.read()
        where = f"{path}:{lineno}"
        if line is None:
            tally.not_utf8(where)
        elif not line.strip():
            tally.empty()
        else:
            yield where, line


def _pair_record(line: str) -> tuple[list[str], list[float], list[float]]:
    """``(texts, teacher, label)`` of one JSONL line; ``ValueError`` saying what is wrong."""
    rec = _json_record(line, ("sent0", "sent1", "teacher"), ("sent0", "sent1"))
    teacher = _finite_numbers(rec, "teacher")
    label = _finite_numbers(rec, "label") if "label" in rec else []
    if len(label) > 1:
        raise ValueError(f"'label' holds {len(label)} values, not one")
    return [rec["sent0"], rec["sent1"]], teacher, label


def read_pairs_jsonl(path, *, max_chars: int = 2000) -> Corpus:
    """JSONL ``{"sent0", "sent1", "teacher": float | list[float], "label"?: float}``.

    Texts must be strings and scores finite JSON numbers. All records must carry
    the same number of teacher values as the first valid one, and either all or
    none a ``label``. Records that do not (or are not JSON objects) are skipped
    as invalid, each named by ``FILE:LINE`` in the warning and ``Corpus.problems``.
    """
    tally, rows = Tally(path), []
    n_teacher, has_label = None, None
    for where, line in _jsonl_lines(path, tally):
        try:
            texts, teacher, label = _pair_record(line)
        except ValueError as e:
            tally.invalid(where, str(e))
            continue
        if n_teacher is None:
            n_teacher, has_label = len(teacher), bool(label)
        if len(teacher) != n_teacher:
            tally.invalid(where, f"{len(teacher)} teacher values, the first record has {n_teacher}")
            continue
        if bool(label) != has_label:
            tally.invalid(where, "a 'label' where the first record has none" if label
                          else "no 'label' where the first record has one")
            continue
        texts, truncated = clean_texts(texts, max_chars=max_chars)
        if texts is None:
            tally.empty()
            continue
        tally.keep(truncated=truncated)
        rows.append((*texts, *teacher, *label))
    columns = ("sent0", "sent1", *[f"teacher_{i}" for i in range(n_teacher or 1)])
    if has_label:
        columns += ("label",)
    return tally.corpus(columns, rows, num_text_columns=2)


def _retrieval_record(line: str, num_negatives: int) -> tuple[list[str], str | None]:
    """``([query, positive, negative_0..K-1], instruction or None)`` of one JSONL line (the
    first ``num_negatives`` negatives); ``ValueError`` saying what is wrong."""
    rec = _json_record(line, ("query", "positive") + (("negatives",) if num_negatives else ()),
                       ("query", "positive", "instruction"))
    negatives = rec.get("negatives", [])
    if not isinstance(negatives, list):
        raise ValueError(f"'negatives' is {type(negatives).__name__}, not a list of strings")
    bad = [n for n in negatives if not isinstance(n, str)]
    if bad:
        raise ValueError(f"'negatives' holds {type(bad[0]).__name__} {bad[0]!r}, not a string")
    if len(negatives) < num_negatives:
        raise ValueError(f"{len(negatives)} negatives, fewer than num_negatives={num_negatives}")
    return [rec["query"], rec["positive"], *negatives[:num_negatives]], rec.get("instruction")


def instructed(query: str, task: str, template: str = QUERY_TEMPLATE) -> str:
    """``query`` behind ``template`` with ``{task}`` filled in, or as it is when ``task`` is
    empty: ``instructed("jax?", "find docs") == "Instruct: find docs\nQuery:jax?"``."""
    return template.replace("{task}", task) + query if task else query


DOCUMENT_ID_RANGE = 1 << 24  # ids are exact in a float32 column below this


def read_retrieval_jsonl(path, *, num_negatives: int = 1, query_instruction: str = "",
                         query_template: str = QUERY_TEMPLATE, document_ids: bool = False,
                         max_chars: int = 2000) -> Corpus:
    """JSONL ``{"query", "positive", "negatives": [str, ...], "instruction"?: str}``.

    Every row keeps its first ``num_negatives`` hard negatives (``K``; a row may list
    more; one with fewer is skipped as invalid, named by ``FILE:LINE``), so batches have the
    static shape ``[B, 2 + K, L]``; ``K = 0`` reads (query, positive) pairs and needs no
    ``negatives``. The query gets the instruction (``instructed``: ``query_template`` with
    ``{task}`` = the row's ``"instruction"``, else ``query_instruction``; none when both are
    empty, and an empty ``"instruction"`` turns the default off for that row); positives and
    negatives never do. ``max_chars`` cuts each text before the instruction is added.

    ``document_ids`` adds float columns ``doc_id_0 .. doc_id_K``: an integer per distinct
    document text (positive, then negatives; numbered in file order, so every process
    agrees), for ``info_nce(document_ids=...)`` to drop a row's positive where it recurs as
    another row's document (Qwen3-Embedding's ``d_j = d_i⁺`` test). Ids are taken modulo
    ``DOCUMENT_ID_RANGE`` (2**24, exact in float32): beyond 16.7M distinct documents two
    texts can share an id, and then one negative of a row is dropped that need not be.

    Returns:
        columns ``("query", "positive", "negative_0", .., "negative_{K-1}"[, "doc_id_0",
        .., "doc_id_K"])``, the first ``2 + K`` text.

    Example::

        corpus = read_retrieval_jsonl("train.jsonl", num_negatives=7,
                                      query_instruction="Given a web search query, retrieve "
                                                        "relevant passages that answer the query")
    """
    tally, rows, ids_of = Tally(path), [], {}
    for where, line in _jsonl_lines(path, tally):
        try:
            texts, instruction = _retrieval_record(line, num_negatives)
        except ValueError as e:
            tally.invalid(where, str(e))
            continue
        texts, truncated = clean_texts(texts, max_chars=max_chars)
        if texts is None:
            tally.empty()
            continue
        task = query_instruction if instruction is None else instruction.strip()
        texts[0] = instructed(texts[0], task, query_template)
        tally.keep(truncated=truncated)
        ids = ([float(ids_of.setdefault(t, len(ids_of)) % DOCUMENT_ID_RANGE) for t in texts[1:]]
               if document_ids else [])
        rows.append((*texts, *ids))
    texts = ("query", "positive", *[f"negative_{k}" for k in range(num_negatives)])
    ids = tuple(f"doc_id_{k}" for k in range(1 + num_negatives)) if document_ids else ()
    return tally.corpus(texts + ids, rows, num_text_columns=len(texts))


def _jsonl_format(path) -> str:
    """``retrieval_jsonl`` when the first non-empty line of ``path`` is an object with a
    ``"query"``, else ``pairs_jsonl`` (whose reader reports what is wrong)."""
    for _, line in utf8_lines(path):
        if line is not None and line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break
            return "retrieval_jsonl" if isinstance(rec, dict) and "query" in rec else "pairs_jsonl"
    return "pairs_jsonl"


SNLI_LABELS = ("entailment", "neutral", "contradiction")


def snli_triplets(directory, split: str, *, max_chars: int = 2000) -> Corpus:
    """SimCSE triplets from SentEval-format SNLI: (premise, entailment, contradiction).

    Hypotheses are grouped by premise in file order; the k-th entailment
    hypothesis of a premise is paired with its k-th contradiction hypothesis
    (premises lacking either label give no triplet; neutral is unused), as the
    SimCSE ``nli_for_simcse.csv`` construction does. ``stats`` count sentence
    pairs (line ``i`` of the three files), ``kept`` the triplets built; a pair
    with an undecodable line or a label other than the three is invalid.
    """
    directory = pathlib.Path(directory)
    paths = [directory / f"{name}.{split}" for name in ("s1", "s2", "labels")]
    cols = [list(utf8_lines(p)) for p in paths]
    if not len(cols[0]) == len(cols[1]) == len(cols[2]):
        raise ValueError(f"{directory}: s1/s2/labels.{split} have {[len(c) for c in cols]} lines")
    tally = Tally(directory)
    groups: dict[str, dict[str, list[str]]] = {}
    for (lineno, s1), (_, s2), (_, label) in zip(*cols):
        tally.read()
        bad = [p for p, text in zip(paths, (s1, s2, label)) if text is None]
        if bad:
            tally.not_utf8(f"{bad[0]}:{lineno}")
            continue
        texts, truncated = clean_texts([s1, s2], max_chars=max_chars)
        if texts is None:
            tally.empty()
            continue
        label = label.strip()
        if label not in SNLI_LABELS:
            tally.invalid(f"{paths[2]}:{lineno}", f"label {label!r} is none of {SNLI_LABELS}")
            continue
        tally.keep(truncated=truncated)
        premise, hypothesis = texts
        group = groups.setdefault(premise, {"entailment": [], "contradiction": []})
        if label in group:
            group[label].append(hypothesis)
    rows = [(p, e, c) for p, g in groups.items() for e, c in zip(g["entailment"], g["contradiction"])]
    return tally.corpus(("sent0", "sent1", "hard_neg"), rows, num_text_columns=3)


def read_source(spec: str, *, data_format: str = "auto", max_chars: int = 2000,
                tfds_data_dir: str = "", **retrieval) -> Corpus:
    """Dispatch on ``data_format`` (``auto``: by prefix/extension).

    ``snli:DIR:SPLIT`` -> :func:`snli_triplets`; ``tfds:NAME/CONFIG:SPLIT`` ->
    TFDS; ``.csv``/``.tsv`` -> triplets; ``.jsonl`` -> retrieval rows when its first
    record has a ``"query"``, else DSE pairs; otherwise lines. ``retrieval``
    (``num_negatives``, ``query_instruction``, ``query_template``) goes to
    :func:`read_retrieval_jsonl`.
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
            fmt = _jsonl_format(spec)
        else:
            fmt = "lines"
    if fmt == "snli":
        _, directory, split = spec.rsplit(":", 2) if spec.startswith("snli:") else ("", *spec.rsplit(":", 1))
        return snli_triplets(directory, split, max_chars=max_chars)
    if fmt == "tfds":
        from jaxembed.data.tfds_source import read_tfds

        return read_tfds(spec, data_dir=tfds_data_dir or None, max_chars=max_chars)
    if fmt == "retrieval_jsonl":
        return read_retrieval_jsonl(spec, max_chars=max_chars, **retrieval)
    reader = {"lines": read_lines, "triplets": read_triplets, "pairs_jsonl": read_pairs_jsonl}[fmt]
    return reader(spec, max_chars=max_chars)
