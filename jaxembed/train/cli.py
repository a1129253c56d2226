"""``jaxembed train CONFIG[:ARG] --workdir DIR [--set key=value ...]``.

Running it again with the same ``--workdir`` resumes from the newest intact
checkpoint (params, optimiser state, RNG, data position), under the same config
(``--set resume=force`` to resume despite a change; see
:mod:`jaxembed.train.config` for the keys that may change freely).

Exit status: 0 done; 2 the config is invalid (also for these devices); 1 the run was refused or
stopped (workdir in use, config differs from the recorded one, non-finite or
collapsed training, disk full, ...), with one line on stderr saying why.

Example::

    jaxembed train configs/quickstart.py --workdir /tmp/qs
    jaxembed train configs/whitenedcse_bert_base.py:tiny --workdir /tmp/w --set steps=20
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="config file defining get_config(arg=None); "
                                       "'path.py:ARG' passes ARG (e.g. ':tiny')")
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, exports")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field (repeatable); unknown keys are an error")
    parser.add_argument("--coordinator", default=None, help="multi-process: coordinator HOST:PORT")
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args) -> int:
    from jaxembed.train.config import load_config

    try:
        cfg = load_config(args.config, overrides=args.overrides)
    except (ValueError, FileNotFoundError) as e:
        print(f"jaxembed train: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        for k, v in cfg.to_dict().items():
            print(f"{k} = {v!r}")
        return 0
    from jaxembed.train.distributed import maybe_initialize

    maybe_initialize(args.coordinator, args.num_processes, args.process_id)
    from jaxembed.train.errors import ConfigError, RunError
    from jaxembed.train.trainer import train

    try:
        summary = train(cfg, args.workdir)
    except RunError as e:  # refused or stopped on purpose: the message says why and what to do
        print(f"jaxembed train: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    last = summary.get("last") or {}
    if last:
        from jaxembed.train.metrics import format_loss

        print(f"done: {summary['steps']} steps, final loss "
              f"{format_loss(last.get('loss', float('nan')))}, exported to {args.workdir}/export")
    return 0


def main(argv=None) -> int:
    """``python -m jaxembed.train.cli CONFIG --workdir DIR ...`` (same as ``jaxembed train``)."""
    parser = argparse.ArgumentParser(prog="jaxembed train", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
