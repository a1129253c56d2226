"""The in-memory training corpus and the bookkeeping every corpus reader shares.

A reader turns records (lines, CSV rows, JSON objects, TFDS examples) into
rows of a :class:`Corpus`. Per record it calls :func:`clean_texts`, which
returns what it did (the cleaned texts, or ``None`` for an empty text, and
whether a text was truncated), and tells a :class:`Tally` the outcome: kept,
empty or invalid (with the reason and ``FILE:LINE``). :meth:`Tally.corpus`
then builds the :class:`Corpus`, and refuses the input when more than
``MAX_INVALID_FRACTION`` (half) of the records read were invalid: a file that
is mostly unparseable is the wrong file or the wrong format, and training on
the few records that happen to parse would hide that. Below the threshold,
skipped records are reported in one warning with the first ``MAX_EXAMPLES``
(5) of them by file and line, and kept in ``Corpus.problems``.

``stats`` (ints only, printed and logged by the trainer):

* ``read``: records read (lines; CSV rows after the header; JSONL lines; ...);
* ``kept``: rows of the corpus;
* ``skipped_empty``: records with an empty (all white space) text;
* ``skipped_invalid``: records that are not UTF-8, not parseable, or carry a
  missing, non-string or non-finite field;
* ``truncated``: kept records with a text cut to ``max_chars`` characters.

Example::

    tally = Tally("c.txt")
    texts, truncated = clean_texts(["  a sentence "], max_chars=2000)
    tally.keep(truncated=truncated)
    corpus = tally.corpus(("text",), [tuple(texts)], num_text_columns=1)
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Sequence

from jaxembed.data.textfile import not_utf8_error

__all__ = ["STAT_KEYS", "MAX_INVALID_FRACTION", "MAX_EXAMPLES", "Corpus", "Tally", "clean_texts"]

STAT_KEYS = ("read", "kept", "skipped_empty", "skipped_invalid", "truncated")
MAX_INVALID_FRACTION = 0.5
MAX_EXAMPLES = 5


@dataclasses.dataclass
class Corpus:
    """Rows of text columns then float columns.

    Attributes:
        columns: column names, the ``num_text_columns`` text columns first.
        rows: tuples in column order.
        stats: ``{key: int}`` for the keys of ``STAT_KEYS`` (see the module docstring).
        num_text_columns: how many leading columns are texts.
        problems: up to ``MAX_EXAMPLES`` ``"FILE:LINE: reason"`` strings for skipped
            invalid records.
    """

    columns: tuple[str, ...]
    rows: list[tuple]
    stats: dict[str, int]
    num_text_columns: int
    problems: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)


def clean_texts(texts: Sequence[str], *, max_chars: int) -> tuple[list[str] | None, bool]:
    """Strip every text of one record and cut it to ``max_chars`` characters.

    Returns:
        ``(cleaned, truncated)``: ``cleaned`` is ``None`` when any text is empty
        after stripping (the record is skipped, and then never counts as
        truncated); ``truncated`` says whether any text was cut.
    """
    cleaned, truncated = [], False
    for text in texts:
        text = text.strip()
        if not text:
            return None, False
        if len(text) > max_chars:
            text, truncated = text[:max_chars], True
        cleaned.append(text)
    return cleaned, truncated


class Tally:
    """What a reader did with each record of ``source``; builds the :class:`Corpus`."""

    def __init__(self, source) -> None:
        self.source = str(source)
        self.stats = {k: 0 for k in STAT_KEYS}
        self.problems: list[str] = []
        self.undecodable = 0

    def read(self, n: int = 1) -> None:
        self.stats["read"] += n

    def empty(self) -> None:
        self.stats["skipped_empty"] += 1

    def keep(self, *, truncated: bool) -> None:
        self.stats["truncated"] += int(truncated)

    def invalid(self, where, reason: str) -> None:
        """Count one invalid record; ``where`` is ``FILE:LINE`` (or a record index)."""
        self.stats["skipped_invalid"] += 1
        if len(self.problems) < MAX_EXAMPLES:
            self.problems.append(f"{where}: {reason}")

    def not_utf8(self, where) -> None:
        """Count one record whose line does not decode as UTF-8 (or holds a NUL byte)."""
        self.undecodable += 1
        self.invalid(where, "not UTF-8")

    def summary(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.stats.items())

    def check(self) -> None:
        """``ValueError`` when more than ``MAX_INVALID_FRACTION`` of the records are invalid."""
        invalid, read = self.stats["skipped_invalid"], self.stats["read"]
        if invalid <= MAX_INVALID_FRACTION * read:
            return
        if self.undecodable > MAX_INVALID_FRACTION * read:
            raise not_utf8_error(
                self.source, f"{self.undecodable} of {read} lines do not decode as UTF-8")
        raise ValueError(
            f"{self.source}: {invalid} of {read} records are invalid (more than "
            f"{MAX_INVALID_FRACTION:.0%}), so this is probably the wrong file or format; "
            f"refusing it ({self.summary()}). First problems: " + "; ".join(self.problems))

    def corpus(self, columns, rows: list[tuple], *, num_text_columns: int) -> Corpus:
        """Check the invalid fraction, warn about skipped records, and build the corpus."""
        self.stats["kept"] = len(rows)
        self.check()
        n = self.stats["skipped_invalid"]
        if n:
            warnings.warn(
                f"{self.source}: skipped {n} invalid record{'s' if n > 1 else ''} "
                f"({self.summary()}); first {len(self.problems)}: " + "; ".join(self.problems),
                stacklevel=3)
        return Corpus(tuple(columns), rows, dict(self.stats), num_text_columns,
                      list(self.problems))
