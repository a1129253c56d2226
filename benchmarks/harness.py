"""What every benchmark shares: the machine description, the timing loops, JSON-line output.

One timing discipline for every script: compile/warm up outside the clock,
then either *interleave* the contenders call by call (:func:`interleave`: each
round runs every case once, so all see the same machine state; right on a CPU
shared with other jobs) or time one contender at a time (:func:`time_calls`:
right on an accelerator, where two frameworks must not hold memory at once,
and for XLA-vs-MKL kernels whose thread pools slow each other when
interleaved, see ``gemm.py``). Results are one JSON object per line on stdout
(:func:`emit`), optionally appended to a file, each benchmark's first line
carrying :func:`machine`.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from typing import Any, Callable


def cpu_name() -> str:
    """The CPU model as ``lscpu`` names it (``platform.processor()`` without lscpu)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine() -> dict:
    """Where and with what a benchmark ran: CPU, cores, load, and the versions of the
    frameworks it imported (``jax_backend``/``device`` once jax is imported)."""
    info: dict[str, Any] = {"cpu": cpu_name(), "cores": os.cpu_count(),
                            "load_avg": round(os.getloadavg()[0], 2),
                            "python": platform.python_version()}
    if "jax" in sys.modules:
        import jax

        info.update(jax=jax.__version__, jax_backend=jax.default_backend(),
                    device=str(jax.devices()[0].device_kind))
    if "torch" in sys.modules:
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    return info


def time_calls(fn: Callable[[], Any], *, repeats: int, warmup: int = 0,
               sync: Callable[[Any], Any] = lambda out: out) -> tuple[list[float], Any]:
    """Seconds of each of ``repeats`` timed calls of ``sync(fn())`` after ``warmup``
    untimed ones, and the last call's result.

    ``sync`` must block until the work is done (``jax.block_until_ready``,
    ``torch.cuda.synchronize``); the default suits functions that block themselves.
    """
    out = None
    for _ in range(warmup):
        out = sync(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = sync(fn())
        times.append(time.perf_counter() - t0)
    return times, out


def interleave(cases: dict[str, Callable[[], Any]], *, repeats: int,
               warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each case, timed round-robin: ``warmup`` untimed rounds,
    then ``repeats`` rounds that call every case once, in order. Cases must block."""
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def ab_rounds(a: Callable[[Any], Any], b: Callable[[Any], Any],
              inputs: list) -> list[tuple[float, float, float, float]]:
    """Time ``a(x)`` and ``b(x)`` on each ``x`` of ``inputs`` (one round per input, both on
    the same input, who goes first alternating: ``a`` in odd rounds counting from 1). Returns
    per round ``(a_wall_s, b_wall_s, a_cpu_s, b_cpu_s)``, CPU time being this process's
    ``time.process_time`` (less sensitive than wall time to a machine shared with other
    jobs). Both must block until their work is done."""
    rounds = []
    for r, x in enumerate(inputs, start=1):
        wall, cpu = {}, {}
        for name, fn in (("a", a), ("b", b)) if r % 2 else (("b", b), ("a", a)):
            t, c = time.perf_counter(), time.process_time()
            fn(x)
            wall[name], cpu[name] = time.perf_counter() - t, time.process_time() - c
        rounds.append((wall["a"], wall["b"], cpu["a"], cpu["b"]))
    return rounds


def encode_ab(enc, run_jax: Callable[[list], Any], run_ref: Callable[[list], Any],
              slices: list[list[str]], *, batch_size: int, ref: str,
              out: str | os.PathLike | None = None) -> dict:
    """``Encoder.encode`` (``run_jax``) against a reference encoder (``run_ref``) on text
    ``slices``: precompile every shape, warm both up on ``slices[0]`` (their max |diff|),
    then one :func:`ab_rounds` round per further slice, a JSON line each. Returns the
    summary fields (medians, warm-up, compile time and shapes, max |diff|); ``ref`` names
    the reference in the keys (``"{ref}_sent_per_s"``)."""
    import statistics

    import numpy as np

    t = time.perf_counter()
    for part in slices:  # shapes depend on how texts are batched: precompile per call
        enc.precompile(part, batch_size=batch_size)
    compile_s, n_shapes = time.perf_counter() - t, enc._trace_count
    warm, first = {}, {}
    for name, fn in (("jaxembed", run_jax), (ref, run_ref)):
        t = time.perf_counter()
        first[name] = np.asarray(fn(slices[0]))
        warm[name] = round(time.perf_counter() - t, 2)
    rates = {"jaxembed": [], ref: []}
    ratios, cpu_ratios = [], []
    for r, (wall_jax, wall_ref, cpu_jax, cpu_ref) in enumerate(
            ab_rounds(run_jax, run_ref, slices[1:]), start=1):
        n = len(slices[r])
        rates["jaxembed"].append(n / wall_jax)
        rates[ref].append(n / wall_ref)
        ratios.append(wall_ref / wall_jax)
        cpu_ratios.append(cpu_ref / cpu_jax)
        emit({"round": r, "jaxembed_sent_per_s": round(rates["jaxembed"][-1], 1),
              f"{ref}_sent_per_s": round(rates[ref][-1], 1), "speedup": round(ratios[-1], 3),
              "cpu_time_speedup": round(cpu_ratios[-1], 3)}, out)
    return {
        **{f"{k}_sent_per_s": round(statistics.median(v), 1) for k, v in rates.items()},
        "speedup_median": round(statistics.median(ratios), 3),
        "cpu_time_speedup_median": round(statistics.median(cpu_ratios), 3),
        "warmup_s": warm,
        "compile_s": round(compile_s, 2),
        "compiled_shapes": n_shapes,
        "traces_after_precompile": enc._trace_count - n_shapes,
        "max_abs_diff": float(np.abs(first["jaxembed"] - first[ref]).max()),
    }


def emit(row: dict, out: str | os.PathLike | None = None) -> dict:
    """Print ``row`` as one JSON line (flushed) and append it to ``out`` if given."""
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        path = pathlib.Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(line + "\n")
    return row


def json_lines(text: str) -> list[dict]:
    """The JSON objects among a script's output lines (tables and logs skipped)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def run_module(name: str, argv: list[str], env: dict | None = None) -> list[dict]:
    """Run ``python -m benchmarks.NAME *argv`` in a fresh process (XLA reads its flags
    once per process) and return the JSON lines it printed."""
    root = pathlib.Path(__file__).resolve().parent.parent
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *argv], env=env,
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"benchmarks.{name} {' '.join(argv)} failed:\n{out.stderr[-3000:]}")
    return json_lines(out.stdout)
