#!/usr/bin/env bash
# One-call GPU benchmark wrapper, for a lent accelerator with no internet.
#
#   bash benchmarks/gpu.sh [bench|investigate|smoke]
#
#   bench        the issue's table: BERT-base SimCSE and WhitenedCSE train steps,
#                batch 128 and 512, jaxembed vs the PyTorch AMP reference, MFU
#                (~5-6 min on one H100; also times threefry dropout bits once)
#   investigate  why the jax step is slow (~5 min, jax only, batch 128 SimCSE):
#                XLA GPU flag variants with --breakdown, fused-threefry vs rbg
#                dropout bits, and a jax.profiler trace
#   smoke        the same code path on a tiny model; runs on CPU in ~1 min
#
# Every mode runs `python -m benchmarks.train_step` (see its docstring) from the
# repository root, so jaxembed is imported from this checkout when not installed.
#
# Results: one JSON line per case in $OUT/results.jsonl (and, for investigate,
# $OUT/<variant>/results.jsonl and $OUT/profile/train_step.xplane.pb); OUT
# defaults to benchmarks/results/gpu_<UTC time>. Uses only what the machine has:
# jax (CUDA), flax, optax, orbax, transformers, torch; nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-bench}"
OUT="${OUT:-benchmarks/results/gpu_$(date -u +%Y%m%d_%H%M)}"
mkdir -p "$OUT"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # PyTorch and JAX share the card in turn
PY="${PYTHON:-python3}"
STEP=("$PY" -m benchmarks.train_step --model bert-base --dtype bfloat16 --warmup 3)

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null \
  | tee "$OUT/card.txt" || echo "no nvidia-smi" | tee "$OUT/card.txt"

case "$mode" in
  bench)
    "${STEP[@]}" --batch-sizes 128,512 --steps 15 --dropout-rng rbg --baseline-threefry --out "$OUT"
    ;;
  investigate)
    one=(--batch-sizes 128 --objectives simcse_unsup --no-torch --steps 10)
    for variant in default no_triton_gemm autotune0; do
      case "$variant" in
        default) flags="" ;;
        no_triton_gemm) flags="--xla_gpu_enable_triton_gemm=false" ;;
        autotune0) flags="--xla_gpu_autotune_level=0" ;;
      esac
      XLA_FLAGS="$flags" "${STEP[@]}" "${one[@]}" --dropout-rng rbg --breakdown --out "$OUT/$variant"
    done
    "${STEP[@]}" "${one[@]}" --dropout-rng threefry,rbg --out "$OUT/dropout_bits"
    "${STEP[@]}" "${one[@]}" --dropout-rng rbg --profile "$OUT/profile" --out "$OUT/profile"
    ;;
  smoke)
    "${STEP[@]}" --model tiny --batch-sizes 16 --steps 3 --warmup 1 --matmul-n 256 \
      --dropout-rng threefry,rbg --breakdown --out "$OUT"
    ;;
  *)
    echo "usage: bash benchmarks/gpu.sh [bench|investigate|smoke]" >&2
    exit 2
    ;;
esac
echo "results in $OUT"
