"""``jaxembed mine``: hard negatives for retrieval training (:mod:`jaxembed.bulk.mine`).

    jaxembed mine --model M --queries PAIRS.jsonl [--corpus DOCS.txt] --out OUT.jsonl
        [--top-k 50] [--num-negatives 7] [--skip-top N] [--margin 0.1 | --max-score-ratio R]
        [--instruction TASK] [--keep-short] [--batch-size N] [--pooling P]

Exit status: 0 done; 2 for a usage error (unreadable or malformed input, a model that
does not load); 1 when the run fails (e.g. the output cannot be written).
"""

from __future__ import annotations

import argparse
import sys

from jaxembed.argtypes import nonnegative_int, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (safetensors) or hub id")
    parser.add_argument("--queries", required=True, metavar="FILE",
                        help='JSONL {"query", "positive", "instruction"?} per line')
    parser.add_argument("--corpus", metavar="FILE",
                        help="documents, one per line (the positives are always added)")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help='JSONL {"query", "positive", "negatives", "instruction"?}')
    parser.add_argument("--top-k", type=positive_int, default=50,
                        help="candidates per query, positives excluded (default 50)")
    parser.add_argument("--num-negatives", type=positive_int, default=7)
    parser.add_argument("--skip-top", type=nonnegative_int, default=0,
                        help="drop the first N candidates (likely false negatives)")
    guard = parser.add_mutually_exclusive_group()
    guard.add_argument("--margin", type=float, default=None,
                       help="keep candidates scoring <= positive score - MARGIN")
    guard.add_argument("--max-score-ratio", type=float, default=None, metavar="R",
                       help="keep candidates scoring <= R x positive score")
    parser.add_argument("--instruction", default="", metavar="TASK",
                        help="query task for rows without their own 'instruction'; the "
                        "query is embedded as 'Instruct: TASK\\nQuery:QUERY'")
    parser.add_argument("--keep-short", action="store_true",
                        help="write rows with fewer than --num-negatives (default: drop them)")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--pooling", default=None, help="override the model's pooling")


def _error(message, status: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def run(args: argparse.Namespace) -> int:
    from jaxembed.bulk.mine import mine_file, read_corpus, read_pairs
    from jaxembed.models.encoder import Encoder

    try:  # inputs first: a bad line fails before the model loads
        read_pairs(args.queries)
        if args.corpus is not None:
            read_corpus(args.corpus)
    except (OSError, ValueError) as e:
        return _error(e, 2)
    try:
        enc = Encoder.from_pretrained(args.model, pooling=args.pooling)
    except (OSError, ValueError) as e:
        return _error(f"--model {args.model}: {e}", 2)
    try:
        mine_file(enc, args.queries, args.out, corpus=args.corpus, top_k=args.top_k,
                  num_negatives=args.num_negatives, skip_top=args.skip_top,
                  margin=args.margin, max_score_ratio=args.max_score_ratio,
                  instruction=args.instruction, keep_short=args.keep_short,
                  batch_size=args.batch_size,
                  log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except OSError as e:
        return _error(e, 1)
    return 0
