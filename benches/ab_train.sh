#!/usr/bin/env bash
# Two (or more) rnmt binaries side by side on the same training job, alternating, to measure one change:
#
#   benches/ab_train.sh THREADS ROUNDS OLD_BINARY NEW_BINARY [...]
#
# Each run trains configs/multi30k-de-en.toml (config A) for 60 steps from the same seed on
# Multi30k de-en prepared in $WORK (default target/vs_pytorch, shared with vs_pytorch.sh) and prints
# target tok/s over steps 11-60 (from metrics.jsonl) and the loss at step 60, which must agree for a
# change that does not touch the arithmetic. Copy the old binary aside before rebuilding.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=$1 rounds=$2
shift 2
corpora=${RNMT_CORPORA:-corpora}
work=${WORK:-target/vs_pytorch}
data=$work/multi30k-de-en-8000
if [ ! -f "$data/prepare.json" ]; then
  "$1" prepare --train "$corpora/multi30k/train" --src-lang de --tgt-lang en \
    --vocab-size 8000 --out "$data" > /dev/null
fi
# The figures depend on the CPU: say which one, and the SIMD flags the kernels can choose from.
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); flags:$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512_vnni|avx512_bf16|amx_tile)$' | tr '\n' ' ')"
for r in $(seq "$rounds"); do
  for bin in "$@"; do
    run=$work/ab-$(basename "$bin")-$r
    rm -rf "$run"
    "$bin" train --config configs/multi30k-de-en.toml --set "data=\"$(realpath "$data")\"" \
      --set "run_dir=\"$(realpath -m "$run")\"" --set max_steps=60 --set valid_every=100000 \
      --threads "$threads" > /dev/null 2>&1
    python3 - "$run/metrics.jsonl" "$bin" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"train"' in l]
start = next(r for r in rows if r["step"] == 10)
last = rows[-1]
tokens = sum(r["target_tokens"] for r in rows if r["step"] > 10)
print(f'{sys.argv[2]}: {tokens / (last["elapsed_s"] - start["elapsed_s"]):.0f} tok/s, loss at step {last["step"]} {last["loss"]:.6f}')
PY
  done
done
