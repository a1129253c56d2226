"""``jaxembed align``: supervised Procrustes (+ MUSE refinement) and BLI evaluation.

    jaxembed align --src-emb A.vec --tgt-emb B.vec --train-dict D1 --test-dict D2
        [--refine N] [--normalize CHAIN] [--retrieval nn|csls] [--max-vocab N]
        [--out MAPPED.vec] [--json]

Steps: read both ``.vec`` files (first ``--max-vocab`` words), apply the
normalisation chain to each, fit Procrustes on the training pairs found in the
vocabularies, run ``--refine`` rounds of CSLS mutual-NN induction + Procrustes,
then translate the test dictionary's source words and report P@1/5/10 (%).
With ``--json`` the last stdout line is one JSON object with
``precision_at_1``, ``precision_at_5``, ``precision_at_10``, ``n_queries`` and
``n_queries_total``.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src-emb", required=True, help="source embeddings (.vec, UTF-8)")
    parser.add_argument("--tgt-emb", required=True, help="target embeddings (.vec, UTF-8)")
    parser.add_argument(
        "--train-dict", required=True, help="training dictionary, 'src tgt' per line"
    )
    parser.add_argument("--test-dict", required=True, help="test dictionary, 'src tgt' per line")
    parser.add_argument(
        "--refine",
        type=int,
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
    parser.add_argument("--knn", type=int, default=10, help="CSLS neighbourhood size")
    parser.add_argument(
        "--max-vocab", type=int, default=200000, help="words read from each .vec file"
    )
    parser.add_argument(
        "--max-rank",
        type=int,
        default=10000,
        help="refinement: dictionary induction among this many most frequent words (0 = all)",
    )
    parser.add_argument(
        "--dico-mode", choices=("S2T&T2S", "S2T|T2S", "S2T", "T2S"), default="S2T&T2S"
    )
    parser.add_argument("--query-block", type=int, default=1024)
    parser.add_argument("--key-block", type=int, default=8192)
    parser.add_argument(
        "--out", default=None, metavar="MAPPED.vec", help="write the mapped source embeddings"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON line with the results last"
    )


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from jaxembed.align.bli import evaluate_bli
    from jaxembed.align.io import dictionary_ids, read_dictionary, read_vec, write_vec
    from jaxembed.align.normalize import normalize_embeddings, parse_chain
    from jaxembed.align.refinement import apply_map, refine

    chain = parse_chain(args.normalize)
    src = read_vec(args.src_emb, max_vocab=args.max_vocab)
    tgt = read_vec(args.tgt_emb, max_vocab=args.max_vocab)
    for name, wv in (("source", src), ("target", tgt)):
        print(
            f"{name}: {len(wv)} words x {wv.vectors.shape[1]} dims "
            f"({wv.n_malformed} malformed, {wv.n_duplicates} duplicate lines skipped)"
        )
    if src.vectors.shape[1] != tgt.vectors.shape[1]:
        print(
            f"error: dimensions differ ({src.vectors.shape[1]} vs {tgt.vectors.shape[1]})",
            file=sys.stderr,
        )
        return 2
    x = normalize_embeddings(src.vectors, chain)
    y = normalize_embeddings(tgt.vectors, chain)

    train = dictionary_ids(read_dictionary(args.train_dict), src.word2id, tgt.word2id)
    test = dictionary_ids(read_dictionary(args.test_dict), src.word2id, tgt.word2id)
    print(
        f"train: {len(train.pairs)} pairs, "
        f"{train.n_src_found}/{train.n_src_total} source words found"
    )
    print(
        f"test: {len(test.pairs)} pairs, {test.n_src_found}/{test.n_src_total} source words found"
    )
    if len(train.pairs) == 0 or len(test.pairs) == 0:
        print("error: no dictionary pair has both words in the vocabularies", file=sys.stderr)
        return 2

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
        print(json.dumps(result))
    return 0
