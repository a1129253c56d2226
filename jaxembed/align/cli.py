"""``jaxembed align``: supervised Procrustes (+ MUSE refinement) and BLI evaluation.

    jaxembed align --src-emb A.vec --tgt-emb B.vec --train-dict D1 --test-dict D2
        [--refine N] [--normalize CHAIN] [--retrieval nn|csls] [--max-vocab N]
        [--keep-case] [--out MAPPED.vec] [--json]

Steps: read both ``.vec`` files as MUSE does (words lower-cased, the first,
most frequent, occurrence of each kept, first ``--max-vocab`` distinct words;
``--keep-case`` keeps the case), apply the normalisation chain to each, fit
Procrustes on the training pairs found in the vocabularies (``--train-dict
identical_char``: every word spelled the same in both), run ``--refine``
rounds of CSLS mutual-NN induction + Procrustes, then translate the test
dictionary's source words and report P@1/5/10 (%). With ``--json`` the last
stdout line is one JSON object with ``precision_at_1``, ``precision_at_5``,
``precision_at_10``, ``n_queries`` and ``n_queries_total``. An unreadable or
malformed input ends the run with ``error: FILE:LINE: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from jaxembed.argtypes import nonnegative_int, positive_int

IDENTICAL_CHAR = "identical_char"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src-emb", required=True, help="source embeddings (.vec, UTF-8)")
    parser.add_argument("--tgt-emb", required=True, help="target embeddings (.vec, UTF-8)")
    parser.add_argument(
        "--train-dict",
        required=True,
        help="training dictionary, 'src tgt' per line, or identical_char "
        "(words spelled the same in both vocabularies, as MUSE)",
    )
    parser.add_argument("--test-dict", required=True, help="test dictionary, 'src tgt' per line")
    parser.add_argument(
        "--keep-case",
        action="store_true",
        help="keep the case of .vec words and dictionaries (default: lower-case both and keep "
        "each word's first, most frequent, vector, as MUSE does)",
    )
    parser.add_argument(
        "--refine",
        type=nonnegative_int,
        default=0,
        metavar="N",
        help="MUSE refinement rounds after Procrustes (default 0)",
    )
    parser.add_argument(
        "--normalize",
        default="",
        metavar="CHAIN",
        help="normalisation chain, e.g. renorm,center,renorm (unit = renorm)",
    )
    parser.add_argument("--retrieval", choices=("nn", "csls"), default="csls")
    parser.add_argument("--knn", type=positive_int, default=10, help="CSLS neighbourhood size")
    parser.add_argument(
        "--max-vocab",
        type=nonnegative_int,
        default=200000,
        help="distinct words read from each .vec file (0 = all)",
    )
    parser.add_argument(
        "--max-rank",
        type=nonnegative_int,
        default=10000,
        help="refinement: dictionary induction among this many most frequent words (0 = all)",
    )
    parser.add_argument(
        "--dico-mode", choices=("S2T&T2S", "S2T|T2S", "S2T", "T2S"), default="S2T&T2S"
    )
    parser.add_argument("--query-block", type=positive_int, default=1024)
    parser.add_argument("--key-block", type=positive_int, default=8192)
    parser.add_argument(
        "--out",
        default=None,
        metavar="MAPPED.vec",
        help="write the mapped source embeddings (of the words as read: lower-cased "
        "unless --keep-case)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON line with the results last"
    )


def _describe_vectors(name, wv) -> list[str]:
    lines = [
        f"{name}: {len(wv)} words x {wv.vectors.shape[1]} dims ({wv.n_duplicates} duplicate "
        f"words skipped, first kept; {wv.n_malformed} malformed lines skipped; "
        f"{wv.n_zero} all-zero vectors given 0.01 in dim 0)"
    ]
    return lines + [f"  malformed: {p}" for p in wv.problems]


def _describe_dictionary(name, ids) -> str:
    return (
        f"{name}: {len(ids.pairs)} pairs found ({ids.n_src_found}/{ids.n_src_total} source words); "
        f"{ids.n_missing} pairs with an unknown word ({ids.n_missing_src} source, "
        f"{ids.n_missing_tgt} target) skipped"
    )


def _read_inputs(args):
    """Both vocabularies and both dictionaries as row ids (``ValueError``/``OSError`` if bad)."""
    from jaxembed.align.io import dictionary_ids, identical_char_ids, read_dictionary, read_vec

    lowercase = not args.keep_case
    max_vocab = args.max_vocab or None
    src = read_vec(args.src_emb, max_vocab=max_vocab, lowercase=lowercase)
    tgt = read_vec(args.tgt_emb, max_vocab=max_vocab, lowercase=lowercase)
    if args.train_dict == IDENTICAL_CHAR:
        train = identical_char_ids(src.word2id, tgt.word2id)
    else:
        pairs = read_dictionary(args.train_dict, lowercase=lowercase)
        train = dictionary_ids(pairs, src.word2id, tgt.word2id)
    pairs = read_dictionary(args.test_dict, lowercase=lowercase)
    test = dictionary_ids(pairs, src.word2id, tgt.word2id)
    return src, tgt, train, test


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from jaxembed.align.bli import evaluate_bli
    from jaxembed.align.io import write_vec
    from jaxembed.align.normalize import normalize_embeddings, parse_chain
    from jaxembed.align.refinement import apply_map, refine

    chain = parse_chain(args.normalize)
    try:
        src, tgt, train, test = _read_inputs(args)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, wv in (("source", src), ("target", tgt)):
        print("\n".join(_describe_vectors(name, wv)))
    if src.vectors.shape[1] != tgt.vectors.shape[1]:
        print(
            f"error: dimensions differ ({src.vectors.shape[1]} vs {tgt.vectors.shape[1]})",
            file=sys.stderr,
        )
        return 2
    need = max(10, args.knn)  # P@10 retrieves 10 targets; CSLS averages --knn neighbours
    sizes = {"source": len(src), "target": len(tgt)}
    small = [f"{name} {n}" for name, n in sizes.items() if n < need]
    if small:
        print(f"error: too few words ({', '.join(small)}); P@10 and --knn {args.knn} need "
              f"at least {need} in each vocabulary", file=sys.stderr)
        return 2
    print(_describe_dictionary("train", train))
    print(_describe_dictionary("test", test))
    if len(train.pairs) == 0 or len(test.pairs) == 0:
        print("error: no dictionary pair has both words in the vocabularies", file=sys.stderr)
        return 2
    x = normalize_embeddings(src.vectors, chain)
    y = normalize_embeddings(tgt.vectors, chain)

    blocking = dict(query_block=args.query_block, key_block=args.key_block)
    w, dico = refine(
        x,
        y,
        train.pairs,
        n_iter=args.refine,
        max_rank=args.max_rank,
        knn=args.knn,
        mode=args.dico_mode,
        **blocking,
    )
    if args.refine:
        print(f"refinement: {args.refine} rounds, last dictionary {len(dico)} pairs")
    mapped = apply_map(x, w)
    result = evaluate_bli(mapped, y, test.pairs, retrieval=args.retrieval, knn=args.knn, **blocking)
    result["n_queries_total"] = test.n_src_total
    print(
        f"{args.retrieval.upper()}: P@1 {result['precision_at_1']:.2f}  "
        f"P@5 {result['precision_at_5']:.2f}  "
        f"P@10 {result['precision_at_10']:.2f}  ({result['n_queries']}/{test.n_src_total} queries)"
    )
    if args.out:
        write_vec(args.out, src.words, np.asarray(mapped))
        print(f"wrote {args.out}")
    if args.json:
        print(json.dumps(result, allow_nan=False))
    return 0
