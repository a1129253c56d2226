"""``jaxembed plan CONFIG[:ARG] --topology NAME [--num-slices K] [--set key=value ...] [--json]``.

Compiles the config's train step for a TPU topology on this machine (no TPU,
no weights; needs ``pip install 'jaxembed[tpu]'``) and prints per-chip memory,
whether it fits in HBM, XLA's FLOPs and step-time estimate, the resulting
sentences/s and MFU bounds, and the shardings of the largest parameters and
activations (see :mod:`jaxembed.train.plan`).

Example::

    jaxembed plan configs/whitenedcse_bert_base.py --topology v5p:2x2x2 --set max_length=128
    jaxembed plan configs/simcse_unsup_bert_base.py --topology v5p:4x4x8 \\
        --set mesh_data=1 --set mesh_fsdp=-1 --json
    jaxembed plan configs/quickstart.py --decoder-shape qwen3-8b --topology v5p:4x4x4 \\
        --set batch_size=1024 --set max_length=512 --set mesh_data=1 --set mesh_fsdp=-1 \\
        --set mixed_precision=true --set temperature=0.02 --remat
    jaxembed plan configs/quickstart.py --decoder-shape qwen3-8b --topology v5p:2x2x2 \\
        --set batch_size=256 --set max_length=512 --set mesh_data=1 --set mesh_fsdp=8 \\
        --set mixed_precision=true --set temperature=0.02 --remat \\
        --set 'lora={"target": "layers/layer/.*_proj/kernel", "rank": 16, "alpha": 32}'
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="config file defining get_config(arg=None); "
                                       "'path.py:ARG' passes ARG (e.g. ':tiny')")
    parser.add_argument("--topology", required=True,
                        help="TPU slice, e.g. v4:2x2x1, v5p:2x2x2, v5e:4x4, v6e:2x4")
    parser.add_argument("--num-slices", type=int, default=1, help="slices joined over DCN "
                        "(they split the data axis)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field (repeatable), e.g. mesh_fsdp=8")
    parser.add_argument("--decoder-shape", default=None, metavar="NAME",
                        help="plan a decoder-LLM embedder of this preset shape (random "
                             "weights, never read): qwen3-0.6b, qwen3-8b, llama3-8b; a config "
                             "whose model folder holds a decoder config.json needs no flag")
    parser.add_argument("--remat", action="store_true",
                        help="decoders: rematerialise each layer in the backward pass")
    parser.add_argument("--no-scan-layers", dest="scan_layers", action="store_false",
                        help="decoders: unroll the layers instead of nn.scan: a slower compile, "
                             "but XLA's FLOPs and the MFU bound then cover every layer")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--hlo", metavar="FILE", default=None,
                        help="also write the compiled program's HLO text to FILE")


@contextlib.contextmanager
def _compile_only_env():
    """Run JAX on the CPU, so that libtpu never looks for (or locks) a local TPU, and
    quiet libtpu's search for TPU hosts — for this call only: a ``TPU_WORKER_HOSTNAMES``
    left behind would make a later ``jaxembed train`` in the same process (or a child)
    believe it runs on a TPU pod and call ``jax.distributed.initialize``."""
    saved = {k: os.environ.get(k) for k in ("JAX_PLATFORMS", "TPU_WORKER_HOSTNAMES")}
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if os.environ["JAX_PLATFORMS"] == "cpu":
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(args) -> int:
    from jaxembed.train.config import load_config
    from jaxembed.train.plan import format_plan, plan, to_json

    try:
        with _compile_only_env():
            cfg = load_config(args.config, overrides=args.overrides)
            report = plan(cfg, topology=args.topology, num_slices=args.num_slices,
                          hlo_path=args.hlo, decoder_shape=args.decoder_shape, remat=args.remat,
                          scan_layers=args.scan_layers)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"jaxembed plan: {e}", file=sys.stderr)
        return 2
    print(to_json(report) if args.json else format_plan(report))
    return 0


def main(argv=None) -> int:
    """``python -m jaxembed.train.plan_cli ...`` (same as ``jaxembed plan``)."""
    parser = argparse.ArgumentParser(prog="jaxembed plan", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
