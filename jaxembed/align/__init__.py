"""Embedding-space alignment: Procrustes, NN/CSLS retrieval, MUSE refinement, BLI.

Typical use (what ``jaxembed align`` runs)::

    src = read_vec("wiki.en.vec", max_vocab=200_000)   # lower-cased, first occurrence wins
    tgt = read_vec("wiki.si.vec", max_vocab=200_000)
    x = normalize_embeddings(src.vectors, "renorm,center,renorm")
    y = normalize_embeddings(tgt.vectors, "renorm,center,renorm")
    train = dictionary_ids(read_dictionary("train.txt"), src.word2id, tgt.word2id)
    w, _ = refine(x, y, train.pairs, n_iter=0)          # plain Procrustes
    test = dictionary_ids(read_dictionary("test.txt"), src.word2id, tgt.word2id)
    evaluate_bli(x @ w, y, test.pairs, retrieval="csls")  # P@1/5/10
"""

import importlib

# name -> submodule; imported lazily so that ``jaxembed align --help`` does not load jax
_EXPORTS = {
    "bli_precision": "bli",
    "evaluate_bli": "bli",
    "gold_sets": "bli",
    "translate": "bli",
    "DictionaryIds": "io",
    "WordVectors": "io",
    "dictionary_ids": "io",
    "identical_char_ids": "io",
    "read_dictionary": "io",
    "read_vec": "io",
    "write_vec": "io",
    "normalize_embeddings": "normalize",
    "parse_chain": "normalize",
    "procrustes": "orthogonal",
    "apply_map": "refinement",
    "induce_dictionary": "refinement",
    "refine": "refinement",
    "csls_topk": "retrieval",
    "l2_normalize": "retrieval",
    "mean_topk_similarity": "retrieval",
    "nn_topk": "retrieval",
    "topk_scores": "retrieval",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"jaxembed.align.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'jaxembed.align' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
