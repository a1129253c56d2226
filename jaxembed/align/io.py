"""Word-vector and bilingual-dictionary files, read as MUSE reads them (UTF-8 throughout).

* ``.vec`` (fastText / word2vec text): an optional header ``N D``, then one
  ``word v_1 ... v_D`` line per word. As MUSE's ``read_txt_embeddings``: the
  word is everything before the first space, the rest must be exactly D
  numbers (D from the header, else from the first line); by default words are
  lower-cased and the **first** occurrence of each (lower-cased) word wins, so
  that "London" (more frequent, earlier) and not "london" is the vector of
  the dictionary's "london"; an all-zero vector gets 0.01 as its first value
  (MUSE's guard against null embeddings); ``max_vocab`` counts distinct
  (lower-cased) words. ``lowercase=False`` keeps the case, as MUSE's
  ``full_vocab`` reading for its export does (``max_vocab`` still applies). Lines are split on ``\\n``
  only (fastText vocabularies contain U+2028 and other characters that
  ``str.splitlines`` would treat as breaks).
* Dictionaries (MUSE's ``load_dictionary``): ``src tgt`` per line, split on
  white space; a line with one field is skipped (and reported), a line with
  three or more is an error (MUSE fails on it too). MUSE asserts that
  dictionaries are lower-case; here they are lower-cased when the vocabularies
  are. Pairs with a word missing from a vocabulary are dropped and counted
  (:func:`dictionary_ids`), and the rest sorted by source frequency rank, as
  MUSE does. :func:`identical_char_ids` is MUSE's ``identical_char`` dictionary.

Where this reader is stricter than MUSE (which decodes with ``errors="ignore"``
and keeps NaN/inf values): a line that is not UTF-8, has the wrong number of
values, a value that is not a finite number, or a vector norm above
``MAX_NORM`` (whose float32 squares and products overflow) is skipped and
counted as malformed, the first few named by ``FILE:LINE``; a file where most
lines are malformed (e.g. a header dimension that does not match the rows)
or that is not UTF-8 at all is refused with a ``ValueError`` saying so.

Reference: Conneau et al., "Word translation without parallel data" (MUSE),
ICLR 2018, ``src/utils.py`` (read_txt_embeddings, load_embeddings) and
``src/evaluation/word_translation.py`` (load_dictionary, load_identical_char_dico).
"""

from __future__ import annotations

import dataclasses
import pathlib
import warnings

import numpy as np

from jaxembed.data.corpus import MAX_EXAMPLES
from jaxembed.data.textfile import not_utf8_error, strict_utf8_lines, utf8_lines

__all__ = [
    "MAX_NORM",
    "WordVectors",
    "read_vec",
    "write_vec",
    "read_dictionary",
    "dictionary_ids",
    "identical_char_ids",
    "DictionaryIds",
]

MAX_NORM = 1e15
ZERO_FIX = 0.01  # MUSE: "avoid to have null embeddings"


@dataclasses.dataclass(frozen=True)
class WordVectors:
    """Words and their vectors, in file order (most frequent first for fastText).

    Attributes:
        words: list of n words (lower-cased unless read with ``lowercase=False``).
        vectors: float32 array [n, d].
        word2id: ``{word: row}``.
        n_malformed: lines skipped because they could not be parsed.
        n_duplicates: lines skipped because their (lower-cased) word was already read.
        n_zero: all-zero vectors whose first value was set to 0.01 (as MUSE does).
        problems: up to 5 ``"FILE:LINE: reason"`` strings for malformed lines.
    """

    words: list
    vectors: np.ndarray
    word2id: dict
    n_malformed: int = 0
    n_duplicates: int = 0
    n_zero: int = 0
    problems: tuple = ()

    def __len__(self) -> int:
        return len(self.words)


def _parse_header(line: str):
    fields = line.split()
    if len(fields) == 2 and all(f.isdigit() for f in fields):
        return int(fields[0]), int(fields[1])
    return None


def _parse_vector(values: list[str], dim: int, header: bool) -> np.ndarray:
    """The float64 vector of one line, or ``ValueError`` saying why it is malformed."""
    if len(values) != dim:
        raise ValueError(f"{len(values)} values, expected {dim}"
                         + (" (the header's dimension)" if header else " (as on the first line)"))
    try:
        vec = np.array(values, dtype=np.float64)
    except ValueError:
        raise ValueError("a value is not a number") from None
    if not np.isfinite(vec).all():
        raise ValueError("a value is not finite")
    norm = float(np.linalg.norm(vec))
    if norm > MAX_NORM:
        raise ValueError(f"vector norm {norm:.3g} is above {MAX_NORM:g}, where float32 "
                         "arithmetic on it overflows; rescale the file")
    return vec


def read_vec(path, *, max_vocab: int | None = None, lowercase: bool = True) -> WordVectors:
    """Read a fastText/word2vec text file as MUSE does (see the module docstring).

    Args:
        path: the ``.vec`` file.
        max_vocab: keep only the first ``max_vocab`` distinct (lower-cased) words.
        lowercase: lower-case every word, keeping the first occurrence (MUSE's
            default); ``False`` keeps words as written.

    Returns:
        :class:`WordVectors` with ``vectors`` float32 [n, d].

    Raises:
        ValueError: no word vector at all, more than half of the lines read
            malformed, or a file that is not UTF-8.

    Example:
        >>> wv = read_vec("wiki.si.vec", max_vocab=200_000)  # doctest: +SKIP
        >>> wv.vectors.shape, wv.n_malformed  # doctest: +SKIP
        ((200000, 300), 0)
    """
    if max_vocab is not None and max_vocab <= 0:
        raise ValueError(f"max_vocab must be positive, got {max_vocab}")
    words: list[str] = []
    rows: list[np.ndarray] = []
    word2id: dict[str, int] = {}
    dim, header = None, False
    n_malformed = n_undecodable = n_duplicates = n_zero = 0
    problems: list[str] = []

    def malformed(lineno, reason):
        nonlocal n_malformed
        n_malformed += 1
        if len(problems) < MAX_EXAMPLES:
            problems.append(f"{path}:{lineno}: {reason}")

    for lineno, line in utf8_lines(path):
        if line is None:
            n_undecodable += 1
            malformed(lineno, "not UTF-8")
            continue
        line = line.rstrip()
        if not line:
            continue
        if lineno == 1 and _parse_header(line) is not None:
            dim, header = _parse_header(line)[1], True
            continue
        word, _, rest = line.partition(" ")
        values = rest.split()
        if not word or not values:
            malformed(lineno, "no word" if not word else "no values")
            continue
        if dim is None:  # no header: the first line fixes d
            dim = len(values)
        try:
            vec = _parse_vector(values, dim, header)
        except ValueError as e:
            malformed(lineno, str(e))
            continue
        if lowercase:
            word = word.lower()
        if word in word2id:
            n_duplicates += 1
            continue
        if not vec.any():
            vec[0] = ZERO_FIX
            n_zero += 1
        word2id[word] = len(words)
        words.append(word)
        rows.append(vec)
        if max_vocab is not None and len(words) >= max_vocab:
            break
    n_lines = len(words) + n_duplicates + n_malformed
    if n_undecodable > n_lines / 2:
        raise not_utf8_error(path, f"{n_undecodable} of {n_lines} lines do not decode as UTF-8")
    if not n_lines:
        raise ValueError(f"{path}: no word vectors")
    if not words or n_malformed > n_lines / 2:
        raise ValueError(f"{path}: {n_malformed} of {n_lines} lines are malformed "
                         f"({len(words)} word vectors read); first: " + "; ".join(problems))
    vectors = np.stack(rows).astype(np.float32)
    return WordVectors(words, vectors, word2id, n_malformed, n_duplicates, n_zero, tuple(problems))


def write_vec(path, words, vectors, *, fmt: str = "%.9g") -> None:
    """Write ``words`` and ``vectors`` [n, d] as a ``.vec`` file with an ``n d`` header.

    ``fmt`` defaults to 9 significant digits, which round-trips float32 exactly.
    """
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[0] != len(words):
        raise ValueError(f"vectors has shape {vectors.shape}, expected [{len(words)}, d]")
    path = pathlib.Path(path)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(f"{vectors.shape[0]} {vectors.shape[1]}\n")
        for word, vec in zip(words, vectors):
            if not word or " " in word or "\n" in word:
                raise ValueError(f"word {word!r} cannot be written to a .vec file")
            f.write(word + " " + " ".join(fmt % x for x in vec.tolist()) + "\n")


def read_dictionary(path, *, lowercase: bool = True) -> list[tuple[str, str]]:
    """Read a MUSE-style dictionary: one ``src tgt`` pair per line, split on white space.

    Args:
        path: the dictionary (UTF-8).
        lowercase: lower-case both words (to match vocabularies read with
            ``read_vec(lowercase=True)``; MUSE requires lower-case dictionaries).

    Returns:
        The pairs in file order, duplicates kept (MUSE fits Procrustes on every line).
        Lines with one field are skipped, with a warning naming the first few.

    Raises:
        ValueError: a line with three or more fields, or a line that is not UTF-8
            (``FILE:LINE``).
    """
    pairs, skipped = [], []
    for lineno, line in strict_utf8_lines(path):
        fields = line.split()
        if not fields:
            continue
        if len(fields) == 1:
            skipped.append(f"{path}:{lineno}: one field {fields[0]!r}")
            continue
        if len(fields) > 2:
            raise ValueError(f"{path}:{lineno}: {len(fields)} fields {line.strip()[:80]!r}; "
                             "a dictionary line is 'source target'")
        src, tgt = fields
        pairs.append((src.lower(), tgt.lower()) if lowercase else (src, tgt))
    if skipped:
        warnings.warn(f"{path}: skipped {len(skipped)} line(s) without a translation: "
                      + "; ".join(skipped[:MAX_EXAMPLES]), stacklevel=2)
    return pairs


@dataclasses.dataclass(frozen=True)
class DictionaryIds:
    """A dictionary mapped to vocabulary rows (MUSE's ``load_dictionary``).

    Attributes:
        pairs: int64 array [P, 2] of (source row, target row), pairs whose two words
            are both found, sorted by source row (frequency rank; stable).
        n_src_found: distinct source words among ``pairs`` (the BLI queries).
        n_src_total: distinct source words in the dictionary.
        n_missing: pairs dropped because a word is missing from a vocabulary.
        n_missing_src, n_missing_tgt: of those, pairs whose source / target word is missing.
    """

    pairs: np.ndarray
    n_src_found: int
    n_src_total: int
    n_missing: int = 0
    n_missing_src: int = 0
    n_missing_tgt: int = 0


def _sorted_ids(found: list[tuple[int, int]]) -> np.ndarray:
    ids = np.array(found, dtype=np.int64).reshape(-1, 2)
    return ids[np.argsort(ids[:, 0], kind="stable")]


def dictionary_ids(pairs, src_word2id: dict, tgt_word2id: dict) -> DictionaryIds:
    """Map word pairs to row ids, dropping (and counting) pairs with a word missing."""
    found = []
    n_missing_src = n_missing_tgt = 0
    for s, t in pairs:
        if s in src_word2id and t in tgt_word2id:
            found.append((src_word2id[s], tgt_word2id[t]))
        else:
            n_missing_src += s not in src_word2id
            n_missing_tgt += t not in tgt_word2id
    ids = _sorted_ids(found)
    return DictionaryIds(ids, len(np.unique(ids[:, 0])), len({s for s, _ in pairs}),
                         len(pairs) - len(found), n_missing_src, n_missing_tgt)


def identical_char_ids(src_word2id: dict, tgt_word2id: dict) -> DictionaryIds:
    """MUSE's ``identical_char`` training dictionary: every word spelled the same in both
    vocabularies, paired with itself, sorted by source frequency rank."""
    found = [(i, tgt_word2id[w]) for w, i in src_word2id.items() if w in tgt_word2id]
    if not found:
        raise ValueError("no word is spelled the same in both vocabularies; give a dictionary")
    ids = _sorted_ids(found)
    return DictionaryIds(ids, len(ids), len(ids))
