"""Word-vector and bilingual-dictionary files (UTF-8 throughout).

* ``.vec`` (fastText / word2vec text): an optional header ``N D``, then one
  ``word v_1 ... v_D`` line per word. Lines are split on ``\\n`` only (fastText
  vocabularies contain U+2028 and other characters that ``str.splitlines``
  would treat as breaks); the last D space-separated fields are the vector, the
  rest the word. Malformed lines (invalid UTF-8, wrong field count, bad floats)
  are skipped and counted; for duplicate words the first occurrence wins.
* Dictionaries (MUSE style): ``src tgt`` per line, separated by a space or a tab.

Reference: Conneau et al., "Word translation without parallel data" (MUSE),
ICLR 2018, ``src/utils.py`` (read_txt_embeddings) and ``src/evaluation/word_translation.py``.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

__all__ = [
    "WordVectors",
    "read_vec",
    "write_vec",
    "read_dictionary",
    "dictionary_ids",
    "DictionaryIds",
]


@dataclasses.dataclass(frozen=True)
class WordVectors:
    """Words and their vectors, in file order (most frequent first for fastText).

    Attributes:
        words: list of n words.
        vectors: float32 array [n, d].
        word2id: ``{word: row}``.
        n_malformed: lines skipped because they could not be parsed.
        n_duplicates: lines skipped because their word was already read.
    """

    words: list
    vectors: np.ndarray
    word2id: dict
    n_malformed: int = 0
    n_duplicates: int = 0

    def __len__(self) -> int:
        return len(self.words)


def _parse_header(fields: list[bytes]):
    if len(fields) == 2 and all(f.isdigit() for f in fields):
        return int(fields[0]), int(fields[1])
    return None


def read_vec(path, *, max_vocab: int | None = None) -> WordVectors:
    """Read a fastText/word2vec text file.

    Args:
        path: the ``.vec`` file.
        max_vocab: keep only the first ``max_vocab`` distinct words (file order).

    Returns:
        :class:`WordVectors` with ``vectors`` float32 [n, d].

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
    dim = None
    n_malformed = n_duplicates = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f):
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                continue
            if lineno == 0:
                header = _parse_header(raw.split())
                if header is not None:
                    dim = header[1]
                    continue
            try:
                line = raw.decode("utf-8").rstrip(" ")
            except UnicodeDecodeError:
                n_malformed += 1
                continue
            if dim is None:  # no header: the first parseable line fixes d
                dim = len(line.split(" ")) - 1
            fields = line.rsplit(" ", dim)
            word = fields[0]
            if len(fields) != dim + 1 or not word.strip():
                n_malformed += 1
                continue
            try:
                vec = np.array(fields[1:], dtype=np.float32)
            except ValueError:
                n_malformed += 1
                continue
            if not np.isfinite(vec).all():
                n_malformed += 1
                continue
            if word in word2id:
                n_duplicates += 1
                continue
            word2id[word] = len(words)
            words.append(word)
            rows.append(vec)
            if max_vocab is not None and len(words) >= max_vocab:
                break
    vectors = np.stack(rows) if rows else np.zeros((0, dim or 0), np.float32)
    return WordVectors(words, vectors, word2id, n_malformed, n_duplicates)


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


def read_dictionary(path) -> list[tuple[str, str]]:
    """Read a MUSE-style dictionary: one ``src tgt`` pair per line (space or tab).

    Lines that do not hold exactly two fields are skipped. Order and duplicates
    are kept (MUSE fits Procrustes on every line).
    """
    pairs = []
    with open(path, "rb") as f:
        for raw in f:
            fields = raw.decode("utf-8").rstrip("\r\n").replace("\t", " ").split(" ")
            fields = [x for x in fields if x]
            if len(fields) == 2:
                pairs.append((fields[0], fields[1]))
    return pairs


@dataclasses.dataclass(frozen=True)
class DictionaryIds:
    """A dictionary mapped to vocabulary rows.

    Attributes:
        pairs: int64 array [P, 2] of (source row, target row), pairs whose two words are both found.
        n_src_found: distinct source words among ``pairs`` (the BLI queries).
        n_src_total: distinct source words in the dictionary.
    """

    pairs: np.ndarray
    n_src_found: int
    n_src_total: int


def dictionary_ids(pairs, src_word2id: dict, tgt_word2id: dict) -> DictionaryIds:
    """Map word pairs to row ids, dropping pairs with a word missing from either vocabulary."""
    found = [
        (src_word2id[s], tgt_word2id[t]) for s, t in pairs if s in src_word2id and t in tgt_word2id
    ]
    ids = np.array(found, dtype=np.int64).reshape(-1, 2)
    return DictionaryIds(ids, len(np.unique(ids[:, 0])), len({s for s, _ in pairs}))
