"""Texts -> padded int32 token arrays, with a Hugging Face fast (Rust) tokenizer.

Each text is tokenised once. Over-long texts are cut to ``max_length`` tokens
(special tokens included) and counted: the tokenizer is asked for its overflow
(``return_overflowing_tokens``), which gives the cut tail of a truncated text as
extra rows mapped to the same text, so a text was truncated iff it owns more
than one row -- exact, also for a text of exactly ``max_length`` tokens, and
with no second tokenisation. The caller warns once per call
(:func:`warn_truncated`).

Example::

    ids, types, n_cut = token_ids(tok, ["a dog", "a cat"], max_length=128)
    batch = pad(ids, types, rows=2, length=8, pad_id=0)   # input_ids / attention_mask /
                                                          # token_type_ids, int32 [2, 8]
"""

from __future__ import annotations

import pathlib
import warnings
from typing import Optional, Sequence

import numpy as np

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "sentencepiece.bpe.model",
    "spiece.model",
)


def load_tokenizer(folder: pathlib.Path):
    """The folder's fast tokenizer, or None if it has no tokenizer files (the loader has
    checked that the folder's files do not link outside it)."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
    if not tok.is_fast:
        raise ValueError(f"{folder}: only fast (Rust) tokenizers are supported")
    return tok


def check_vocab(tokenizer, vocab_size: int) -> None:
    """Every id the tokenizer can emit must index the embedding table: an id
    ``>= vocab_size`` would read past it (NaN or garbage embeddings, no error)."""
    if tokenizer is None:
        return
    largest = max(tokenizer.get_vocab().values(), default=-1)
    if largest >= vocab_size:
        raise ValueError(
            f"vocab_size {vocab_size} (config.json) is too small for the tokenizer, whose "
            f"ids reach {largest}; ids >= {vocab_size} would index past the embedding table"
        )


def check_texts(texts) -> list[str]:
    """``texts`` as a list of str; ``TypeError`` for a bare string or a non-str item."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a sequence of str, not a single string")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
    return texts


def preprocess(texts: Sequence[str], *, strip: bool, lower: bool) -> list[str]:
    """sentence-transformers' text preprocessing: strip, then lower-case if asked."""
    out = [t.strip() for t in texts] if strip else list(texts)
    return [t.lower() for t in out] if lower else out


def token_ids(
    tokenizer, texts: Sequence[str], *, max_length: int, strip: bool = False, lower: bool = False
):
    """Tokenise without padding, each text once (after :func:`preprocess`).

    Returns ``(ids, types, n_truncated)``: ``ids`` a list of N token-id lists (at most
    ``max_length`` long), ``types`` the matching token-type lists or None, and
    ``n_truncated`` how many texts were longer than ``max_length`` tokens.
    """
    if tokenizer is None:
        raise ValueError(
            "this encoder has no tokenizer (the folder had none); "
            "feed input_ids to apply/embed directly"
        )
    tok = tokenizer(
        preprocess(texts, strip=strip, lower=lower),
        truncation=True,
        max_length=max_length,
        return_overflowing_tokens=True,
        padding=False,
        return_attention_mask=False,
        return_token_type_ids=True,
        verbose=False,
    )
    ids, types = tok["input_ids"], tok.get("token_type_ids")
    owner = np.asarray(tok["overflow_to_sample_mapping"], np.int64)
    n_truncated = 0
    if len(owner) > len(texts):  # a text's first row is its kept head, the rest overflow
        counts = np.bincount(owner, minlength=len(texts))
        n_truncated = int(np.count_nonzero(counts > 1))
        first = np.searchsorted(owner, np.arange(len(texts)))
        ids = [ids[j] for j in first]
        types = None if types is None else [types[j] for j in first]
    longest = max((len(x) for x in ids), default=0)
    if longest > max_length:
        raise ValueError(
            f"max_length={max_length} cannot hold the tokenizer's special tokens "
            f"({longest} tokens for a text)"
        )
    return ids, types, n_truncated


def pad(ids, types, *, rows: int, length: int, pad_id: int) -> dict:
    """Lists of token ids -> int32 ``[rows, length]`` ``input_ids``, ``attention_mask``,
    ``token_type_ids``; rows beyond ``len(ids)`` are all-pad with mask 0."""
    input_ids = np.full((rows, length), pad_id, np.int32)
    mask = np.zeros((rows, length), np.int32)
    token_type = np.zeros((rows, length), np.int32)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = x
        mask[i, : len(x)] = 1
        if types is not None:
            token_type[i, : len(x)] = types[i]
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": token_type}


def warn_truncated(n: int, max_length: int, *, stacklevel: int = 4) -> None:
    """One ``UserWarning`` for ``n`` truncated texts (``stacklevel`` 4: the user's call
    of an ``Encoder`` method)."""
    if n:
        warnings.warn(
            f"{n} text(s) longer than max_length={max_length} tokens were truncated",
            UserWarning,
            stacklevel=stacklevel,
        )


def tokenize(
    tokenizer,
    texts: Sequence[str],
    *,
    max_length: int,
    pad_id: int,
    length_table: tuple[int, ...],
    pad_to: Optional[int] = None,
    strip: bool = False,
    lower: bool = False,
) -> dict:
    """Tokenise, warn about truncation, and pad to the smallest length in
    ``length_table`` that fits the longest text (or exactly ``pad_to``)."""
    from jaxembed.models.buckets import bucket_for

    texts = check_texts(texts)
    ids, types, n_truncated = token_ids(
        tokenizer, texts, max_length=max_length, strip=strip, lower=lower
    )
    warn_truncated(n_truncated, max_length)
    longest = max((len(x) for x in ids), default=1)
    length = pad_to if pad_to is not None else bucket_for(longest, length_table)
    if longest > length:
        raise ValueError(f"pad_to={length} is shorter than the longest sequence ({longest} tokens)")
    return pad(ids, types, rows=len(texts), length=length, pad_id=pad_id)
