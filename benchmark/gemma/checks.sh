#!/usr/bin/env bash
# Gemma-3-270M checks (needs `bash install.sh --with gemma-3-270m`); figures go to
# benchmark/results/gemma.md. Run from the repository root.
set -euo pipefail
OUT=${OUT:-/tmp/sah_gemma_checks}
mkdir -p "$OUT"
lscpu | grep "Model name"; date -u
t() { local s=$SECONDS; /usr/bin/time -f "peak RSS %M KiB" "$@"; echo "wall $((SECONDS - s)) s"; }
echo "== record 2048 tokens, layers 0 and 5"
t python3 -m sah.cli record --model gemma-3-270m --tokens 2048 --layers 0,5 --out "$OUT/g2048.safetensors" --no-progress
python3 benchmark/gemma/window_check.py "$OUT/g2048.safetensors"
echo "== validate at 2048 tokens, 128 positions"
t python3 -m sah.cli validate --model gemma-3-270m --tokens 2048 --positions 128 --text docs \
    --config benchmark/gemma/dense_local.yaml --config benchmark/gemma/sink_local_top_k.yaml \
    --json "$OUT/validate.json"
echo "== record 8192 tokens (chunked prefill), all layers"
t python3 -m sah.cli record --model gemma-3-270m --tokens 8192 --out "$OUT/g8192.safetensors" --no-progress
