#!/usr/bin/env bash
# Decoding speed on Multi30k test2016 (de→en, 1000 sentences): sentences/s of
# `rnmt translate` at beam 1 and beam 5, side by side with the PyTorch reference model's
# beam search of the same sizes once the performance issue provides it.
#
#   MODEL=runs/multi30k/best benches/decode_multi30k.sh
#
# Environment:
#   MODEL           model folder or hf:ORG/NAME (default: the installed default model)
#   RNMT_CORPORA    corpora folder (default: corpora/, else ../shared/corpora)
#   THREADS         decoding threads (default 2), BATCH sentences per batch (default 32)
#   BEAMS           beam sizes (default "1 5"), LIMIT first N test sentences (default all)
#   PYTORCH_DECODE  the PyTorch side: a command that takes --beam N, reads German lines on
#                   stdin and writes English lines on stdout, loading the same model. Until
#                   the performance issue's benches/ provide it, its column reads n/a.
# Timings are wall clock of the whole command (model loading included); each beam's
# output is checked to have one line per input line. The last lines are
# `beam N: X sentences/s`.
set -euo pipefail
cd "$(dirname "$0")/.."
corpora=${RNMT_CORPORA:-corpora}
# A clean clone has corpora/ without the data; CI keeps it in ../shared/corpora.
if [ -z "${RNMT_CORPORA:-}" ] && [ ! -d corpora/multi30k ] && [ -d ../shared/corpora/multi30k ]; then
  corpora=../shared/corpora
fi
test_de="$corpora/multi30k/test_2016_flickr.de"
[ -f "$test_de" ] || { echo "no $test_de: set RNMT_CORPORA to the corpora folder" >&2; exit 1; }
command -v bc > /dev/null || { echo "bc is needed (apt-get install bc)" >&2; exit 1; }
model_args=()
if [ -n "${MODEL:-}" ]; then
  model_args=(--model "$MODEL")
  case "$MODEL" in
    hf:*) ;;
    *) [ -f "$MODEL/config.json" ] || { echo "MODEL=$MODEL is not a model folder (no config.json)" >&2; exit 1; } ;;
  esac
fi

cargo build --release --quiet --bin rnmt
rnmt=${CARGO_TARGET_DIR:-target}/release/rnmt
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
head -n "${LIMIT:-1000000000}" "$test_de" > "$out/input"
n=$(wc -l < "$out/input")

rate() { # command... → sentences/s (wall clock); the output must have n lines
  local t0 t1 lines
  t0=$(date +%s.%N)
  "$@" < "$out/input" > "$out/hyp"
  t1=$(date +%s.%N)
  lines=$(wc -l < "$out/hyp")
  [ "$lines" -eq "$n" ] || { echo "$*: $lines output lines for $n inputs" >&2; exit 1; }
  echo "$n / ($t1 - $t0)" | bc -l | xargs printf "%.1f"
}

echo "Multi30k test2016: $n sentences, ${THREADS:-2} threads, batch ${BATCH:-32}, model ${MODEL:-default}"
printf "%-6s %16s %16s %8s\n" beam "rnmt sent/s" "pytorch sent/s" ratio
summary=()
for beam in ${BEAMS:-1 5}; do
  ours=$(rate "$rnmt" translate "${model_args[@]}" --beam "$beam" \
    --threads "${THREADS:-2}" --batch-size "${BATCH:-32}")
  theirs=n/a ratio=n/a
  if [ -n "${PYTORCH_DECODE:-}" ]; then
    # shellcheck disable=SC2086 # PYTORCH_DECODE is a command line
    theirs=$(rate $PYTORCH_DECODE --beam "$beam")
    ratio=$(echo "$ours / $theirs" | bc -l | xargs printf "%.2f")
  fi
  printf "%-6s %16s %16s %8s\n" "$beam" "$ours" "$theirs" "$ratio"
  summary+=("beam $beam: $ours sentences/s")
done
printf "%s\n" "${summary[@]}"
