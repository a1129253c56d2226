"""``jaxembed encode``: embed a corpus file into ``.npy`` shards plus a manifest, resumably.

    jaxembed encode --model M --input FILE --output DIR [--field NAME] [--prompt TEXT]
        [--batch-size N] [--rows-per-shard N] [--max-length N] [--pooling P] [--format npy]

One text per line (``--field NAME``: JSONL, the text is that field of each
object). Bad lines -- not UTF-8, empty or whitespace only, JSONL that is not an
object with a string ``NAME`` -- are skipped, counted, named on stderr and
listed in the manifest with line number and reason; row ``i`` of the output is
the ``i``-th good line (``jaxembed.bulk.row_lines(manifest)`` maps rows to
lines). Runs data-parallel on all local devices; progress with sentences/s on
stderr. Killed, the same command resumes from the last complete shard and ends
with the same bytes. Output layout and manifest: :mod:`jaxembed.bulk.shards`.

Exit status: 0 done (or already complete); 2 for a usage error (missing or
non-UTF-8 input, a model that does not load, an output folder of another run
or not a run at all); 1 when the run fails (disk full, no good line at all).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from jaxembed.argtypes import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (safetensors) or hub id")
    parser.add_argument("--input", required=True, metavar="FILE",
                        help="UTF-8 text, one text per line (JSONL with --field)")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="new or empty folder, or an unfinished run's folder to resume")
    parser.add_argument("--field", metavar="NAME",
                        help="read --input as JSONL and encode this string field")
    parser.add_argument("--prompt", metavar="TEXT",
                        help="prepended to every text, as SentenceTransformer.encode(prompt=), "
                        "or a template with {text} (default: the model's default prompt)")
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--rows-per-shard", type=positive_int, default=65536,
                        help="rows per .npy shard (default 65536); also the resume granularity")
    parser.add_argument("--max-length", type=positive_int, default=None,
                        help="truncate texts to this many tokens (default: the model's)")
    parser.add_argument("--pooling", default=None,
                        help="cls, cls_before_pooler, mean, max, last4_mean or last_token "
                        "(default: the model's own)")
    parser.add_argument("--format", choices=("npy",), default="npy",
                        help="shard format (only npy: float32 [rows, dim])")


def _error(message, status: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def run(args: argparse.Namespace) -> int:
    from jaxembed.bulk.inputs import check_input

    try:
        check_input(args.input)
    except (OSError, ValueError) as e:
        return _error(f"--input: {e}", 2)

    from jaxembed.bulk.encode import encode_file
    from jaxembed.bulk.shards import ResumeError
    from jaxembed.models.encoder import Encoder

    try:
        enc = Encoder.from_pretrained(args.model, pooling=args.pooling)
        limit = enc.config.max_tokens
        if args.max_length is not None and args.max_length > limit:
            raise ValueError(f"--max-length {args.max_length} exceeds the model's {limit} "
                             "positions")
    except (OSError, ValueError) as e:
        return _error(f"--model {args.model}: {e}", 2)
    model = pathlib.Path(args.model)  # a folder by its absolute path: resumable from elsewhere
    model = str(model.resolve()) if model.exists() else args.model
    try:
        manifest = encode_file(
            enc, args.input, args.output, model=model, field=args.field,
            prompt=args.prompt, rows_per_shard=args.rows_per_shard,
            batch_size=args.batch_size, max_length=args.max_length)
    except ResumeError as e:
        return _error(e, 2)
    except OSError as e:  # disk full, permissions, the input vanishing mid-run
        return _error(e, 1)
    if manifest["total_rows"] == 0:
        return _error(f"{args.input} has no text to encode "
                      f"({manifest['lines_read']} lines, all bad or empty)", 1)
    return 0
