#!/usr/bin/env bash
# Throughput on an accelerator: bfloat16 compute (the models' `dtype` override; parameters,
# softmax and KL stay float32), batch 1024, every pair and mode, written to
# benchmarks/results/<device>.json (device kind, lower-cased, spaces as underscores); on a
# CPU, cpu-bfloat16-<cpu model>.json, as `throughput.py --dtype bfloat16 --json auto` names it.
#
#   benchmarks/gpu.sh                      # the full run
#   benchmarks/gpu.sh --tiny               # a seconds-long smoke run (works on CPU too)
#   benchmarks/gpu.sh --pairs resnet       # extra arguments go to throughput.py
#
# The full run also writes the language-model pair (lm_throughput.py, lm_memory.py,
# lm_generate.py) as lm-throughput-<device>.json, lm-memory-<device>.json and
# lm-generate-<device>.json.
#
# Environment: PYTHON (default .venv/bin/python, else python3), JAXKD_BENCH_OUT (the output
# folder, default benchmarks/results). Adds the PyTorch peer when torch sees a CUDA device.
# On a GPU, JAXKD_CONV_IMPL/JAXKD_POOL_IMPL 'auto' pick XLA's native convolution and pooling.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
[[ -x "$PYTHON" ]] || PYTHON=python3
OUT_DIR=${JAXKD_BENCH_OUT:-benchmarks/results}

args=(--dtype bfloat16 --batch-size 1024)
tiny=
if [[ "${1:-}" == "--tiny" ]]; then
  shift
  tiny=1
  args=(--quick --dtype bfloat16 --pairs mlp --modes student,cached_kd,eval --batch-size 64 --windows 1
        --steps 2 --warmup 1)
fi

device=$("$PYTHON" -c 'import jax; print(jax.devices()[0].device_kind)' 2>/dev/null \
  | tr '[:upper:] ' '[:lower:]_' | tr -cd 'a-z0-9_.-')
[[ -n "$device" ]] || { echo "gpu.sh: could not start JAX" >&2; exit 1; }

if "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  args+=(--peer torch)
fi

name=$device
if [[ "$device" == cpu ]]; then
  name=cpu-bfloat16-$("$PYTHON" -c 'from jaxkd.recipes.provenance import machine_slug
print(machine_slug())')
fi

mkdir -p "$OUT_DIR"
if [[ -z "$tiny" ]]; then  # the language-model pair: steps, and the vocabulary in chunks
  "$PYTHON" benchmarks/lm_throughput.py --vocab-chunk 128 --json "${OUT_DIR}/lm-throughput-${name}.json"
  "$PYTHON" benchmarks/lm_memory.py --time 5 --json "${OUT_DIR}/lm-memory-${name}.json"
  "$PYTHON" benchmarks/lm_generate.py --json "${OUT_DIR}/lm-generate-${name}.json"
fi
echo "gpu.sh: ${device} -> ${OUT_DIR}/${name}.json" >&2
exec "$PYTHON" benchmarks/throughput.py "${args[@]}" "$@" --json "${OUT_DIR}/${name}.json"
