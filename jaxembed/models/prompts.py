"""Prompts (instructions) for ``Encoder.encode``, with sentence-transformers' semantics.

A prompt is either a prefix, ``prompt + text`` (sentence-transformers), or a template with
``{text}`` marking the text, ``template.replace("{text}", text)`` (PromptEOL, Token
Prepending). An empty prompt is no prompt. Choosing one (:func:`resolve`, as
``SentenceTransformer.encode``): an explicit ``prompt``, else ``prompts[prompt_name]``,
else ``prompts[default_prompt_name]``, else none. ``encode_query`` / ``encode_document`` ask
for the ``"query"`` prompt / the first of ``"document"``, ``"passage"``, ``"corpus"``, and
use no prompt when there is none of that name (sentence-transformers 5+ gives every model
empty ``query`` and ``document`` prompts, so these never fall back to the default prompt).

Prompt tokens are the tokens of the prefix (the template before ``{text}``) tokenised
alone, less a trailing special token (EOS, [SEP]) -- sentence-transformers'
``prompt_length``; pooling with ``include_prompt=False`` leaves that many leading real
tokens of every row out (:func:`jaxembed.models.pooling.exclude_prompt`).

Example::

    prompts = {"query": "Instruct: find the passage\\nQuery:"}
    p = resolve(prompts, None, prompt=None, prompt_name="query")
    apply(["what is jax"], p)          # ['Instruct: find the passage\\nQuery:what is jax']
    apply(["a dog"], 'This sentence : "{text}" means in one word:"')

Reference: ``sentence_transformers`` ``SentenceTransformer.encode`` / ``encode_query`` /
``encode_document`` and ``Transformer._get_prompt_length`` (v5-6).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

TEXT = "{text}"
QUERY_NAMES = ("query",)
DOCUMENT_NAMES = ("document", "passage", "corpus")


def check_prompts(prompts: Any, default_prompt_name: Any, *, source: str = "") -> tuple:
    """``(prompts, default_prompt_name)`` validated: a dict of str -> str (a ``null`` value
    reads as ``""``, as sentence-transformers) and a name in it or None."""
    where = f"{source}: " if source else ""
    if prompts is None:
        prompts = {}
    if not isinstance(prompts, dict):
        raise ValueError(f"{where}prompts must be an object of name -> prompt, got {prompts!r}")
    out = {}
    for name, text in prompts.items():
        text = "" if text is None else text
        if not isinstance(name, str) or not isinstance(text, str):
            raise ValueError(f"{where}prompt {name!r} must map a string to a string, got {text!r}")
        out[name] = text
    if default_prompt_name is not None and default_prompt_name not in out:
        raise ValueError(f"{where}default_prompt_name {default_prompt_name!r} is not one of the "
                         f"prompts {sorted(out)}")
    return out, default_prompt_name


def resolve(
    prompts: dict, default_prompt_name: Optional[str], *, prompt: Optional[str],
    prompt_name: Optional[str],
) -> Optional[str]:
    """The prompt ``encode`` uses (None or ``""``: none); ``ValueError`` for both arguments
    at once or an unknown name."""
    if prompt is not None and prompt_name is not None:
        raise ValueError("give prompt or prompt_name, not both")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        return prompt
    name = default_prompt_name if prompt_name is None else prompt_name
    if name is None:
        return None
    if name not in prompts:
        raise ValueError(f"prompt_name {name!r} is not one of this encoder's prompts "
                         f"{sorted(prompts)}")
    return prompts[name]


def named(prompts: dict, names: Sequence[str]) -> str:
    """The first of ``names`` in ``prompts`` (``encode_query`` / ``encode_document``), or
    ``""``."""
    return next((prompts[n] for n in names if n in prompts), "")


def prefix(prompt: Optional[str]) -> str:
    """The part of ``prompt`` before the text: all of a prefix prompt, a template's head."""
    if not prompt:
        return ""
    return prompt.split(TEXT, 1)[0] if TEXT in prompt else prompt


def apply(
    texts: Sequence[str], prompt: Optional[str], *, clean: Optional[Callable[[str], str]] = None
) -> list[str]:
    """``prompt + text`` or the template filled with each text (``clean``-ed first if given)."""
    texts = [clean(t) for t in texts] if clean is not None else list(texts)
    if not prompt:
        return texts
    if TEXT in prompt:
        return [prompt.replace(TEXT, t) for t in texts]
    return [prompt + t for t in texts]


def token_count(tokenizer, text: str) -> int:
    """Tokens of ``text`` tokenised alone with special tokens, less a trailing special token
    (sentence-transformers' ``prompt_length``); 0 for ``""``."""
    if not text:
        return 0
    ids = tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"]
    if ids and ids[-1] in set(tokenizer.all_special_ids):
        return len(ids) - 1
    return len(ids)
