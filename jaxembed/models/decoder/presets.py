"""Token Prepending settings, prompt templates and the paper's per-model presets.

:class:`TokenPrependingSettings` is what ``Encoder.from_pretrained(...,
token_prepending=...)`` accepts, as the dataclass, a dict of its fields or a preset name:

* ``placeholder`` the token put before the sentence (default ``<PST>``). A tokenizer that
  lacks it gets it with ``add_tokens`` (a plain added token, as the official code), and
  its embedding row is drawn from ``N(0, 1)`` with NumPy's generator seeded ``seed``
  (default 3407, the official script's seed) -- the official code also writes
  ``torch.randn(hidden)``, a standard normal, not ``initializer_range``, into that row
  after ``resize_token_embeddings``. Its draws come from the CUDA generator after
  ``resize_token_embeddings``' own, so the official row cannot be reproduced bit for bit
  on other hardware; only its distribution is. A tokenizer that already has the token
  (an exported folder) uses its row as is.
* ``start_layer``, ``end_layer`` the overwrite happens before layers
  ``start_layer <= i < end_layer`` (``tp_starting_index`` / ``tp_exiting_index``).
* ``output_layer`` which ``hidden_states[k]`` is read (``None``: the last, after the final
  norm; negative counts from the end, as the official ``hidden_states[output_layer]``).
* ``prompt`` the template ``encode`` uses when given none; ``{text}`` marks the sentence.
* ``clean_sentences`` the official batcher's normalisation (:func:`clean_sentence`).

``PROMPTS`` holds the official templates (``evaluate.py``, TP variants): PromptEOL
(Jiang et al. 2023), its "pretended chain of thought" and "knowledge enhancement" variants
(Zhang et al. 2024). ``PRESETS`` holds the per-model settings of the official
``config.yaml``; the official code reads the embedding at the last position of left-padded
batches, which is the ``last_token`` pooling of every padding side here.

======================== ====== ===== ============ ==========
preset                   start  exit  output layer prompt
======================== ====== ===== ============ ==========
``llama2-7b``            1      7     27           prompteol
``llama2-13b``           1      7     -2           cot
``llama3-8b``            1      3     -2           cot
``qwen2-7b``             1      6     -2           cot
``gemma2-9b``            1      6     -2           cot
======================== ====== ===== ============ ==========

(``config.yaml``'s ``llama-2-13b-tp`` and ``llama-3-8b-tp`` entries point at a Llama-2-7B
path; the layer numbers are taken as written.)

What the paper reports, and what is checked here: Fu et al. report that Token Prepending
lifts PromptEOL on LLaMA-2-7B by 7.16 points to 77.19 average Spearman over the seven STS
tasks (STS12-16, STS-B, SICK-R), at about 4% more inference time (numbers quoted from the
paper's summary; its tables were not read here). Those numbers need the LLaMA-2-7B weights
and cannot be reproduced on the machines this repository is tested on, which have none;
the tests instead check, on tiny random Llama models, that ``Encoder.encode`` with these
settings equals a PyTorch implementation of the official algorithm (forward pre-hooks on
the decoder layers, the official tokenizer surgery and sentence normalisation) within 1e-5.

Example::

    enc = Encoder.from_pretrained("Llama-2-7b-hf", token_prepending="llama2-7b")
    z = enc.encode(["A man is playing a guitar."])   # PromptEOL + TP, hidden_states[27]

References: Fu et al. 2025 (Token Prepending, arXiv 2412.11556),
github.com/fuyuchenIfyw/token_prepending (``evaluate.py``, ``config.yaml``); Jiang et al.
2023 (PromptEOL, arXiv 2307.16645); Zhang et al. 2024 (Pretended CoT / Knowledge
Enhancement, arXiv 2404.03921).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

PLACEHOLDER = "<PST>"

PROMPTS = {
    "prompteol": 'This sentence : <PST> "{text}" means in one word:"',
    "cot": 'After thinking step by step , this sentence : <PST> "{text}" means in one word:"',
    "ke": (
        "The essence of a sentence is often captured by its main subjects and actions, while "
        "descriptive terms provide additional but less central details. With this in mind , "
        'this sentence : <PST> "{text}" means in one word:"'
    ),
}


@dataclasses.dataclass(frozen=True)
class TokenPrependingSettings:
    """Token Prepending for ``Encoder`` (see the module docstring for each field)."""

    placeholder: str = PLACEHOLDER
    start_layer: int = 1
    end_layer: int = 99  # the official default: every layer from start_layer on
    output_layer: Optional[int] = None
    prompt: Optional[str] = None
    clean_sentences: bool = False
    seed: int = 3407

    def __post_init__(self):
        for name in ("start_layer", "end_layer", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"token_prepending {name} must be an int, got {value!r}")
        if not 0 <= self.start_layer < self.end_layer:
            raise ValueError(
                f"token_prepending needs 0 <= start_layer < end_layer, got "
                f"{self.start_layer}, {self.end_layer}"
            )
        if not isinstance(self.placeholder, str) or not self.placeholder.strip():
            raise ValueError(f"token_prepending placeholder must be a non-empty string, "
                             f"got {self.placeholder!r}")
        if self.prompt is not None and self.placeholder not in self.prompt:
            raise ValueError(f"token_prepending prompt {self.prompt!r} lacks the placeholder "
                             f"{self.placeholder!r}")


PRESETS = {
    "llama2-7b": TokenPrependingSettings(start_layer=1, end_layer=7, output_layer=27,
                                         prompt=PROMPTS["prompteol"], clean_sentences=True),
    "llama2-13b": TokenPrependingSettings(start_layer=1, end_layer=7, output_layer=-2,
                                          prompt=PROMPTS["cot"], clean_sentences=True),
    "llama3-8b": TokenPrependingSettings(start_layer=1, end_layer=3, output_layer=-2,
                                         prompt=PROMPTS["cot"], clean_sentences=True),
    "qwen2-7b": TokenPrependingSettings(start_layer=1, end_layer=6, output_layer=-2,
                                        prompt=PROMPTS["cot"], clean_sentences=True),
    "gemma2-9b": TokenPrependingSettings(start_layer=1, end_layer=6, output_layer=-2,
                                         prompt=PROMPTS["cot"], clean_sentences=True),
}


def resolve(value: Any) -> Optional[TokenPrependingSettings]:
    """``None``, a preset name, a dict of :class:`TokenPrependingSettings` fields or the
    dataclass itself -> settings (or None); ``ValueError`` names unknown presets / fields."""
    if value is None or isinstance(value, TokenPrependingSettings):
        return value
    if isinstance(value, str):
        if value not in PRESETS:
            raise ValueError(f"unknown token_prepending preset {value!r}; presets: "
                             f"{tuple(PRESETS)}")
        return PRESETS[value]
    if isinstance(value, dict):
        known = {f.name for f in dataclasses.fields(TokenPrependingSettings)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown token_prepending fields {unknown}; known: {sorted(known)}")
        return TokenPrependingSettings(**value)
    raise ValueError(f"token_prepending must be a preset name, a dict or "
                     f"TokenPrependingSettings, got {type(value).__name__}")


def clean_sentence(s: str) -> str:
    """The official batcher's normalisation: append ``.`` unless the sentence ends in one of
    ``.?"'``, turn ``"`` into ``'`` (the template quotes the sentence), and a final ``?``
    into ``.``.

    >>> clean_sentence('He said "hi"')
    "He said 'hi'"
    >>> clean_sentence("Is it?"), clean_sentence("a dog runs")
    ('Is it.', 'a dog runs.')
    """
    if s and s[-1] not in ".?\"'":
        s += "."
    s = s.replace('"', "'")
    if s and s[-1] == "?":
        s = s[:-1] + "."
    return s
