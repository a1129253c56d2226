"""Tables of ``jaxembed plan``: per-chip memory, fit, FLOPs and MFU bounds across TPU slices.

Each cell is one ``python -m jaxembed.cli plan ... --json`` in a fresh process
with a wall-clock limit (``--timeout``; a cell past it is reported as
``{"timeout": true}`` and dropped from the table, not waited for), so the table
is reproducible cell by cell with the exact command in every row. Two suites:

* ``encoders`` (#15.2): WhitenedCSE of ``configs/whitenedcse_bert_base.py`` at
  seq 128, BERT-base and BERT-large, on v5p:2x2x2 / 2x4x4 / 4x4x8 (8 / 32 / 128
  chips), ``fsdp`` 1 / 8 / all chips (the rest of the chips on ``data``);
* ``decoders`` (#17.6): an 8B-shaped Qwen3 and Llama-3 embedder (random
  weights, shapes only), last-token pooling, in-batch InfoNCE at tau 0.02,
  512 tokens: full fine-tune at batch 1024 pairs with FSDP over all chips of
  v5p:4x4x4 (64) and v5p:4x4x8 (128), with and without per-layer remat; and
  LoRA (rank 16, alpha 32, every attention and MLP projection; the frozen base
  FSDP-sharded, AdamW on the adapters only) of the Qwen3-8B shape on
  v5p:2x2x2 (8 chips), remat on, batch 256 pairs (32 pairs = 64 sequences of
  512 tokens per chip, twice the per-chip rows of the full fine-tune cells).

Prints one JSON line per cell (the plan's report plus ``command`` and
``wall_seconds``) and a markdown table at the end.

    python -m benchmarks.plan_table encoders --timeout 180 --out /tmp/plan_enc.jsonl
    python -m benchmarks.plan_table decoders --timeout 600
    python -m benchmarks.plan_table encoders --chips 8 --set batch_size=1024   # every cell
    python -m benchmarks.plan_table --replot /tmp/plan_enc.jsonl     # table only
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

from benchmarks.harness import emit, json_lines, machine

ROOT = pathlib.Path(__file__).resolve().parent.parent
GiB = 1 << 30
TOPOLOGIES = {8: "v5p:2x2x2", 32: "v5p:2x4x4", 64: "v5p:4x4x4", 128: "v5p:4x4x8"}


def encoder_cells(chips=(8, 32, 128)) -> list[list[str]]:
    """``plan`` arguments of the #15.2 table (fsdp 1 / 8 / all, without repeats)."""
    cells = []
    for model in ("bert-base-uncased", "bert-large-uncased"):
        for n in chips:
            for fsdp in sorted({1, 8, n}):
                cells.append(["configs/whitenedcse_bert_base.py", "--topology", TOPOLOGIES[n],
                              "--set", f"model={model}", "--set", "max_length=128",
                              "--set", f"mesh_data={n // fsdp}", "--set", f"mesh_fsdp={fsdp}"])
    return cells


# LoRA on every attention and MLP projection of the scanned decoder stack (rank 16, alpha 32)
DECODER_LORA = ('{"target": "layers/layer/(attn/(q|k|v|o)_proj|mlp/(gate|up|down)_proj)/kernel", '
                '"rank": 16, "alpha": 32}')


def decoder_cells(chips=(64, 128), shapes=("qwen3-8b", "llama3-8b")) -> list[list[str]]:
    """``plan`` arguments of the #17.6 table: full fine-tune with FSDP over every chip (remat
    on and off), then LoRA of the Qwen3-8B shape on 8 chips (remat on, batch 256)."""
    def cell(shape, n, batch, remat, extra=()):
        return (["configs/quickstart.py", "--decoder-shape", shape, "--topology", TOPOLOGIES[n],
                 "--set", f"batch_size={batch}", "--set", "max_length=512",
                 "--set", "mixed_precision=true", "--set", "temperature=0.02",
                 "--set", "mesh_data=1", "--set", f"mesh_fsdp={n}", *extra]
                + (["--remat"] if remat else []))

    cells = [cell(shape, n, 1024, remat) for shape in shapes for n in chips
             for remat in (True, False)]
    if "qwen3-8b" in shapes:
        cells.append(cell("qwen3-8b", 8, 256, True, ("--set", f"lora={DECODER_LORA}")))
    return cells


def run_cell(args: list[str], *, timeout: float) -> dict:
    """One plan in a fresh process; its report plus the command, or ``timeout``/``error``."""
    command = "jaxembed plan " + shlex.join(args)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    t0 = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-m", "jaxembed.cli", "plan", *args, "--json"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"command": command, "timeout": True, "wall_seconds": round(timeout)}
    wall = round(time.perf_counter() - t0, 1)
    rows = json_lines(out.stdout)
    if out.returncode or not rows:
        return {"command": command, "error": out.stderr.strip().splitlines()[-1:],
                "wall_seconds": wall}
    return {**rows[0], "command": command, "wall_seconds": wall}


def _gib(b) -> str:
    return f"{b / GiB:.2f}"


def table(rows: list[dict]) -> str:
    """Markdown table of the cells that compiled (timeouts and errors listed after it)."""
    head = ("| model | chips | mesh data x fsdp | batch | remat | per-chip GiB (args + temp) | fits "
            "| XLA TFLOPs/chip | MFU bound | compile s |\n|---|---|---|---|---|---|---|---|---|---|")
    lines, dropped = [head], []
    for r in rows:
        if "per_chip_bytes" not in r:
            why = f"over {r['wall_seconds']} s" if r.get("timeout") else r.get("error")
            dropped.append(f"- dropped: `{r['command']}` ({why})")
            continue
        if r.get("does_not_fit"):   # refused by the compiler: no costs
            mfu = tflops = "–"
        else:
            mfu = "n/a" if r["mfu_bound"] is None else f"{100 * r['mfu_bound']:.1f}%"
            tflops = f"{r['flops_per_chip'] / 1e12:.2f}" + (
                " (1 layer: scan)" if r.get("scan_layers") else "")
        model = r["model"] + (f" LoRA r{r['lora']['rank']}" if r.get("lora") else "")
        lines.append(
            f"| {model} | {r['chips']} | {r['mesh']['data']} x {r['mesh']['fsdp']} "
            f"| {r['batch_size']} | {'on' if r.get('remat') else 'off'} | {_gib(r['per_chip_bytes'])} "
            f"({_gib(r['argument_bytes'])} + {_gib(r['temp_bytes'])}) "
            f"| {'yes' if r['fits'] else 'NO'} | {tflops} | {mfu} "
            f"| {r['compile_seconds']} |")
    return "\n".join(lines + dropped)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("suite", nargs="?", choices=("encoders", "decoders"), default="encoders")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds per cell")
    p.add_argument("--chips", default="", help="comma-separated chip counts (default: the suite's)")
    p.add_argument("--only", action="append", default=[], metavar="TEXT",
                   help="run only cells whose command contains every TEXT (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="one more `plan --set` for every cell (repeatable; e.g. batch_size=1024)")
    p.add_argument("--out", default="", help="also append the JSON lines here")
    p.add_argument("--replot", default="", help="tabulate saved JSON lines instead of planning")
    a = p.parse_args(argv)
    if a.replot:
        rows = [json.loads(line) for line in pathlib.Path(a.replot).read_text().splitlines()
                if line.startswith('{"') and '"command"' in line]
        print(table(rows))
        return 0
    chips = tuple(int(c) for c in a.chips.split(",")) if a.chips else None
    build = encoder_cells if a.suite == "encoders" else decoder_cells
    cells = build(chips) if chips else build()
    cells = [c for c in cells if all(t in " ".join(c) for t in a.only)]
    cells = [c + [x for kv in a.overrides for x in ("--set", kv)] for c in cells]
    emit({"benchmark": f"plan_table.{a.suite}", **machine()}, a.out)
    rows = [emit(run_cell(args, timeout=a.timeout), a.out) for args in cells]
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
