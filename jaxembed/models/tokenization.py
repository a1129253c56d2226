"""Texts -> padded int32 token arrays, with a Hugging Face fast (Rust) tokenizer.

Each text is tokenised once. Over-long texts are cut to ``max_length`` tokens
(special tokens included) and counted: the tokenizer is asked for its overflow
(``return_overflowing_tokens``), which gives the cut tail of a truncated text as
extra rows mapped to the same text, so a text was truncated iff it owns more
than one row -- exact, also for a text of exactly ``max_length`` tokens, and
with no second tokenisation. The caller warns once per call
(:func:`warn_truncated`).

Padding goes on the right or, with ``left=True``, on the left (decoder tokenizers such
as Qwen3-Embedding's say ``padding_side: left``); pooling and the decoder's positions find
the real tokens on either side, so both give the same embeddings.

The tokenizer adds its special tokens as its files say: BERT's [CLS]/[SEP], a BOS, or an
EOS appended by ``tokenizer.json``'s post-processor (Qwen3-Embedding's template, which
last-token pooling reads). transformers >= 5 drops ``add_eos_token`` / ``add_bos_token``
from ``tokenizer_config.json`` when a ``tokenizer.json`` exists (and so does
sentence-transformers, which uses the same tokenizer); :func:`load_tokenizer` honours
them, so a folder that asks for an EOS gets one, and an export writes it into the
post-processor where every loader sees it.

Example::

    ids, types, n_cut = token_ids(tok, ["a dog", "a cat"], max_length=128)
    batch = pad(ids, types, rows=2, length=8, pad_id=0)   # input_ids / attention_mask /
                                                          # token_type_ids int32 [2, 8],
                                                          # prompt_length int32 [2]
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
    _honour_special_token_flags(tok, folder / "tokenizer_config.json")
    return tok


def _honour_special_token_flags(tok, config_file: pathlib.Path) -> None:
    """Apply ``tokenizer_config.json``'s ``add_bos_token`` / ``add_eos_token: true`` when the
    loaded tokenizer does not already add that token (see the module docstring)."""
    if not config_file.is_file():
        return
    from jaxembed.models.model_files import read_json

    settings = read_json(config_file)
    probe = tok("a", add_special_tokens=True, verbose=False)["input_ids"]
    for flag, token_id, present in (
        ("add_bos_token", tok.bos_token_id, probe[:1] == [tok.bos_token_id]),
        ("add_eos_token", tok.eos_token_id, probe[-1:] == [tok.eos_token_id]),
    ):
        value = settings.get(flag)
        if value is None:
            continue
        if not isinstance(value, bool):
            raise ValueError(f"{config_file}: {flag} must be a bool, got {value!r}")
        if value and not present:
            if token_id is None:
                raise ValueError(f"{config_file}: {flag} is true but the tokenizer has no "
                                 f"{flag[4:7]} token")
            setattr(tok, flag, True)  # rebuilds the post-processor


def ensure_token(tokenizer, token: str) -> tuple[int, bool]:
    """``(id, added)`` of ``token``, added with ``add_tokens`` (a plain added token, never
    split) if the tokenizer lacks it."""
    vocab = tokenizer.get_vocab()
    if token in vocab:
        return int(vocab[token]), False
    tokenizer.add_tokens([token])
    return int(tokenizer.convert_tokens_to_ids(token)), True


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


def pad(
    ids, types, *, rows: int, length: int, pad_id: int, left: bool = False,
    prompt_length: int = 0,
) -> dict:
    """Lists of token ids -> int32 ``[rows, length]`` ``input_ids``, ``attention_mask``,
    ``token_type_ids`` (pads on the right, or the left with ``left=True``) and ``[rows]``
    ``prompt_length`` (the prompt tokens of every row); rows beyond ``len(ids)`` are all-pad
    with mask 0."""
    input_ids = np.full((rows, length), pad_id, np.int32)
    mask = np.zeros((rows, length), np.int32)
    token_type = np.zeros((rows, length), np.int32)
    for i, x in enumerate(ids):
        span = slice(length - len(x), length) if left else slice(0, len(x))
        input_ids[i, span] = x
        mask[i, span] = 1
        if types is not None:
            token_type[i, span] = types[i]
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "token_type_ids": token_type,
        "prompt_length": np.full((rows,), prompt_length, np.int32),
    }


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
    left: bool = False,
    prompt_length: int = 0,
) -> dict:
    """Tokenise, warn about truncation, and pad (see :func:`pad`) to the smallest length in
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
    return pad(ids, types, rows=len(texts), length=length, pad_id=pad_id, left=left,
               prompt_length=prompt_length)
