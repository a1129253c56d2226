"""The ``jaxembed`` command line.

Subcommands live next to what they run; each module exposes
``add_arguments(parser)`` and ``run(args) -> int`` and keeps heavy imports
(jax, transformers) inside ``run`` so that ``jaxembed --help`` stays fast.

    jaxembed train CONFIG --workdir DIR [--set key=value ...]
    jaxembed plan CONFIG --topology v5p:2x2x2 [--set key=value ...] [--json]
    jaxembed eval-sts --model PATH_OR_ID --data-dir DIR [--json]
    jaxembed encode --model PATH_OR_ID --input FILE --output DIR [--field NAME] [--prompt TEXT]
    jaxembed mine --model PATH_OR_ID --queries PAIRS.jsonl [--corpus FILE] --out FILE.jsonl
    jaxembed eval-mteb --model PATH_OR_ID --tasks STSBenchmark,... [--output-dir DIR]
    jaxembed align --src-emb A.vec --tgt-emb B.vec --train-dict D1 --test-dict D2
    jaxembed merge --method METHOD --base DIR --models DIR... --out DIR [--weights W...]
    jaxembed bench {losses,encode,train_step,align} [args passed to the script]
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
_COMMANDS = {
    "train": ("jaxembed.train.cli", "train an embedding model from a config file"),
    "plan": ("jaxembed.train.plan_cli", "compile a step for a TPU topology: memory, FLOPs, MFU"),
    "eval-sts": ("jaxembed.eval.cli", "STS12-16, STS-B, SICK-R (Spearman x 100)"),
    "encode": ("jaxembed.bulk.cli", "embed a text/JSONL file into .npy shards, resumably"),
    "mine": ("jaxembed.bulk.mine_cli", "mine hard negatives into retrieval-training JSONL"),
    "eval-mteb": ("jaxembed.integrations.mteb_cli", "MTEB tasks scored by the mteb package"),
    "align": ("jaxembed.align.cli", "Procrustes/CSLS alignment and BLI evaluation"),
    "merge": ("jaxembed.merge.cli", "merge model folders: task arithmetic, slerp, TIES, DARE, ..."),
    "bench": ("jaxembed.bench", "run a throughput benchmark from benchmarks/"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxembed", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in _COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
