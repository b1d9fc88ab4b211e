#!/usr/bin/env bash
# Decoding speed on Multi30k test2016 (de→en): sentences/s of `rnmt translate` at beam 1
# and beam 5, side by side with the PyTorch reference model's beam search of the same
# sizes once the performance issue provides it (set PYTORCH_DECODE to a command taking
# --beam N, reading stdin and writing stdout; it is skipped otherwise).
#
#   MODEL=runs/multi30k/best benches/decode_multi30k.sh
# Environment: MODEL (default: the installed default model), RNMT_CORPORA (default
# corpora/), THREADS (default 2), BATCH (default 32), BEAMS (default "1 5").
set -euo pipefail
cd "$(dirname "$0")/.."
corpora=${RNMT_CORPORA:-corpora}
input="$corpora/multi30k/test_2016_flickr.de"
[ -f "$input" ] || { echo "no $input (set RNMT_CORPORA)" >&2; exit 1; }
cargo build --release --quiet
rnmt=target/release/rnmt
model_args=()
[ -n "${MODEL:-}" ] && model_args=(--model "$MODEL")
n=$(wc -l < "$input")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

rate() { # command... → sentences/s (wall clock)
  local t0 t1
  t0=$(date +%s.%N)
  "$@" < "$input" > "$out/hyp"
  t1=$(date +%s.%N)
  echo "$n / ($t1 - $t0)" | bc -l | xargs printf "%.1f"
}

printf "%-6s %16s %16s %8s\n" beam "rnmt sent/s" "pytorch sent/s" ratio
for beam in ${BEAMS:-1 5}; do
  ours=$(rate "$rnmt" translate "${model_args[@]}" --beam "$beam" --threads "${THREADS:-2}" --batch-size "${BATCH:-32}")
  theirs=n/a ratio=n/a
  if [ -n "${PYTORCH_DECODE:-}" ]; then
    theirs=$(rate $PYTORCH_DECODE --beam "$beam")
    ratio=$(echo "$ours / $theirs" | bc -l | xargs printf "%.2f")
  fi
  printf "%-6s %16s %16s %8s\n" "$beam" "$ours" "$theirs" "$ratio"
done
