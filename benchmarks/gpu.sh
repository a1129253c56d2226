#!/usr/bin/env bash
# One-call GPU benchmark wrapper, for a lent accelerator with no internet.
#
#   bash benchmarks/gpu.sh [bench|investigate|investigate-smoke|smoke]
#
#   bench        the issue's table: BERT-base SimCSE and WhitenedCSE train steps,
#                batch 128 and 512, jaxembed vs the PyTorch AMP reference, MFU
#                (~5-6 min on one H100; also times threefry dropout bits once)
#   investigate  why the jax step is slow (issue #15; jax only, BERT-base bf16,
#                batch 128 SimCSE, budget <= 8 min on one H100/H200), in order:
#                1. embedding_grad: scatter-adds of the exact embedding-gradient
#                   shapes, bf16 vs f32, and every embedding_lookup's fwd+bwd, with
#                   XLA's dump grepped for atom.global.cas (CAS loops) / atomic adds;
#                2. the scatters again with -nvptx-allow-ftz-atomics (own process);
#                3. the step with each embedding_lookup (cast_take = pre-#15; dropout
#                   0.1, so attention dropout: einsum attention), and a jax.profiler
#                   trace of the first (auto), its top kernels printed (profile_top);
#                4. no attention dropout (0.1/0) and no dropout (0) x attention
#                   xla / cudnn (jax.nn.dot_product_attention's implementations);
#                5. the step with --xla_gpu_enable_triton_gemm=false, --breakdown.
#   investigate-smoke  the same calls on a tiny model and tiny shapes, on the CPU
#                (cudnn replaced by einsum; a few minutes on 2 cores): checks the
#                script before a device is lent
#   smoke        the bench code path on a tiny model; runs on CPU in ~1 min
#
# Every mode runs `python -m benchmarks.NAME` from the repository root, so jaxembed
# is imported from this checkout when not installed.
#
# Results: one JSON line per case in $OUT/results.jsonl (and, for investigate,
# $OUT/<part>/results.jsonl, $OUT/profile/train_step.xplane.pb); OUT defaults to
# benchmarks/results/gpu_<UTC time>. Uses only what the machine has: jax (CUDA),
# flax, optax, orbax, transformers, torch; nothing is installed.
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
  investigate|investigate-smoke)
    if [ "$mode" = investigate ]; then
      model=(--model bert-base --dtype bfloat16 --batch-sizes 128 --steps 10 --warmup 3)
      emb=(--hidden 768 --batch 128 --repeats 20)
      attention=xla,cudnn
    else  # everything tiny, on the CPU
      export JAX_PLATFORMS=cpu
      model=(--model tiny --dtype bfloat16 --batch-sizes 8 --steps 2 --warmup 1
             --matmul-n 128)
      emb=(--hidden 32 --batch 8 --repeats 3)
      attention=xla,einsum  # no cuDNN on a CPU
    fi
    step=("$PY" -m benchmarks.train_step "${model[@]}" --objectives simcse_unsup --no-torch
          --dropout-rng rbg)
    ftz="--xla_backend_extra_options=-nvptx-allow-ftz-atomics"
    for part in scatter scatter_ftz; do
      flags="--xla_dump_to=$OUT/$part/dump --xla_dump_hlo_module_re=.*scatter.*"
      what=(--parts scatter,lookup)
      if [ "$part" = scatter_ftz ]; then flags="$flags $ftz"; what=(--parts scatter); fi
      XLA_FLAGS="$flags" "$PY" -m benchmarks.embedding_grad "${emb[@]}" "${what[@]}" \
        --ptx-dir "$OUT/$part/dump" --tag "$part" --out "$OUT/$part"
      rm -rf "$OUT/$part/dump"  # the grep's counts are in results.jsonl
    done
    "${step[@]}" --embedding-lookup auto,cast_take,take,onehot --profile "$OUT/profile" \
      --out "$OUT/lookups"
    "$PY" -m benchmarks.profile_top "$OUT/profile" --top 25 --out "$OUT/profile"
    "${step[@]}" --dropout 0.1/0,0 --attention "$attention" --out "$OUT/attention"
    if [ "$mode" = investigate ]; then
      export XLA_FLAGS="--xla_gpu_enable_triton_gemm=false"
    fi
    "${step[@]}" --breakdown --out "$OUT/no_triton_gemm"
    unset XLA_FLAGS
    cat "$OUT"/*/results.jsonl > "$OUT/results.jsonl"
    ;;
  smoke)
    "${STEP[@]}" --model tiny --batch-sizes 16 --steps 3 --warmup 1 --matmul-n 256 \
      --dropout-rng threefry,rbg --breakdown --out "$OUT"
    ;;
  *)
    echo "usage: bash benchmarks/gpu.sh [bench|investigate|investigate-smoke|smoke]" >&2
    exit 2
    ;;
esac
echo "results in $OUT"
