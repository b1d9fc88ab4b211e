#!/usr/bin/env bash
# Data-parallel scaling of `rnmt train` on this machine (the `mpi` feature, Open MPI).
#
#   benches/scale.sh [throughput]   # last line: scaling over 1x1: 1x2 F 1w2 G 2x1 H
#   benches/scale.sh ttb            # time to BLEU: the Multi30k recipe, 1x2 against 1w2 and 2x1
#
# throughput: config A of benches/vs_pytorch.sh (configs/multi30k-de-en.toml with
# embeddings and hidden size 256, max_tokens 1024, no validation) for STEPS steps in
# four layouts, alternating, ROUNDS times: one process with one thread (1x1), one
# process with one batch worker of two threads (1x2), one process with two batch workers
# of one thread each (1w2, the default for --threads 2) and two MPI ranks with one thread
# each (2x1, mpirun --bind-to core). tok/s = global target tokens / rank 0's step time
# over the steps after
# WARMUP (from metrics.jsonl; a data-parallel step's time includes its all-reduce),
# median over the rounds; the factor is over 1x1. The two ranks train the same model as
# the one process on the same batches, and so do two batch workers (tests/train_mpi.rs
# checks both without dropout); config A has dropout, whose masks each rank or worker
# draws for its own shard, so the 1w2 and 2x1 losses differ from the others by dropout's
# noise only.
# ttb: the Multi30k recipe (configs/multi30k-de-en.toml) for MINUTES minutes of wall
# clock each, 1x2 and then 2x1, validating every VALID_EVERY steps; prints validation
# BLEU against wall-clock seconds for both.
#
# Environment: RNMT_CORPORA, WORK (default target/vs_pytorch, shared with vs_pytorch.sh),
# ROUNDS (3), STEPS (60), WARMUP (10), MINUTES (10), VALID_EVERY (250). Running as root
# needs OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 (set here).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-throughput}
case "$mode" in throughput | ttb) ;; *)
  echo "usage: benches/scale.sh [throughput|ttb]" >&2
  exit 2
  ;;
esac
command -v mpirun > /dev/null || { echo "mpirun is needed (apt-get install openmpi-bin libopenmpi-dev)" >&2; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
rounds=${ROUNDS:-3} steps=${STEPS:-60} warmup=${WARMUP:-10}
work=${WORK:-target/vs_pytorch}
mkdir -p "$work"
corpora=${RNMT_CORPORA:-corpora}
if [ -z "${RNMT_CORPORA:-}" ] && [ ! -d corpora/multi30k ] && [ -d ../shared/corpora/multi30k ]; then
  corpora=../shared/corpora
fi
[ -f "$corpora/multi30k/train.de" ] || { echo "no $corpora/multi30k/train.de: set RNMT_CORPORA" >&2; exit 1; }

cargo build --release --quiet --features mpi --bin rnmt
rnmt=${CARGO_TARGET_DIR:-target}/release/rnmt
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); flags:$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512_vnni|avx512_bf16|amx_tile)$' | tr '\n' ' ')"
echo "mpi: $(mpirun --version | head -n 1)"
config=configs/multi30k-de-en.toml

# layout NAME RUN_DIR ARGS...: runs `rnmt train` in layout 1x1, 1x2, 1w2 or 2x1.
layout() {
  local name=$1 run=$2
  shift 2
  rm -rf "$run"
  case "$name" in
    1x1) "$rnmt" train --config "$config" "$@" --set "run_dir=\"$run\"" --threads 1 ;;
    1x2) "$rnmt" train --config "$config" "$@" --set "run_dir=\"$run\"" --threads 2 \
      --set batch_workers=1 ;;
    1w2) "$rnmt" train --config "$config" "$@" --set "run_dir=\"$run\"" --threads 2 \
      --set batch_workers=2 ;;
    2x1) mpirun -np 2 --bind-to core "$rnmt" train --config "$config" "$@" \
      --set "run_dir=\"$run\"" --threads 1 ;;
  esac
}

if [ "$mode" = throughput ]; then
  data=$work/multi30k-de-en-8000
  if [ ! -f "$data/prepare.json" ]; then
    "$rnmt" prepare --train "$corpora/multi30k/train" --src-lang de --tgt-lang en \
      --vocab-size 8000 --out "$data" >&2
  fi
  sets=(--set "data=\"$data\"" --set model.embedding_size=256 --set model.hidden_size=256
    --set max_tokens=1024 --set valid_every=0 --set max_epochs=0 --set max_minutes=0.0
    --set log_every=1 --set "max_steps=$steps" --set tune_search=false)
  echo "config A (emb/hidden 256), $steps steps ($warmup warm-up), $rounds rounds, alternating"
  printf "%-6s %-7s %10s %10s %s\n" round layout "tok/s" "loss" "gradient exchange"
  declare -A tps
  for r in $(seq "$rounds"); do
    # Alternate the order from round to round, so no layout always runs first.
    order=(1x1 1x2 1w2 2x1)
    [ $((r % 2)) -eq 0 ] && order=(2x1 1w2 1x2 1x1)
    for l in "${order[@]}"; do
      run=$work/scale-$l
      layout "$l" "$run" "${sets[@]}" > /dev/null 2> "$work/scale-$l.log" ||
        { tail "$work/scale-$l.log" >&2; exit 1; }
      read -r t loss < <(python3 benches/train_tok_s.py "$run/metrics.jsonl" "$warmup" 5)
      exchange=$(grep -ao 'gradient exchange: .*' "$work/scale-$l.log" | sed 's/ (flatten.*//' || true)
      printf "%-6s %-7s %10s %10s %s\n" "$r" "$l" "$t" "$loss" "${exchange#gradient exchange: }"
      tps[$l]="${tps[$l]:-} $t"
    done
  done
  median() { printf "%s\n" "$@" | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
  # shellcheck disable=SC2086 # the lists are words
  m11=$(median ${tps[1x1]}) m12=$(median ${tps[1x2]}) m1w2=$(median ${tps[1w2]}) m21=$(median ${tps[2x1]})
  echo "median tok/s: 1x1 $m11 1x2 $m12 1w2 $m1w2 2x1 $m21"
  awk -v a="$m11" -v b="$m12" -v w="$m1w2" -v c="$m21" \
    'BEGIN {printf "scaling over 1x1: 1x2 %.2f 1w2 %.2f 2x1 %.2f\n", b / a, w / a, c / a}'
  exit 0
fi

# ttb: the recipe as shipped (its data folder, dev set and schedule), a wall-clock budget.
minutes=${MINUTES:-10} every=${VALID_EVERY:-250}
data=$work/multi30k-de-en-recipe
if [ ! -f "$data/prepare.json" ]; then
  "$rnmt" prepare --train "$corpora/multi30k/train" --valid "$corpora/multi30k/val" \
    --src-lang de --tgt-lang en --vocab-size 8000 --out "$data" >&2
fi
echo "Multi30k recipe ($config), $minutes minutes each, validation BLEU (greedy) every $every steps"
for l in 1x2 1w2 2x1; do
  run=$work/ttb-$l
  layout "$l" "$run" --set "data=\"$data\"" --set "max_minutes=$minutes" \
    --set "valid_every=$every" --set tune_search=false > /dev/null 2> "$work/ttb-$l.log" ||
    { tail "$work/ttb-$l.log" >&2; exit 1; }
  python3 - "$run/metrics.jsonl" "$l" << 'EOF'
import json, sys
elapsed = 0.0
points = []
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("kind") == "train":
        elapsed = r["elapsed_s"]
    elif r.get("kind") == "valid":
        points.append(f"{elapsed:.0f}s:{r['bleu']:.2f}")
print(f"{sys.argv[2]} validation BLEU at wall-clock seconds (seconds:BLEU): {' '.join(points)}")
EOF
done
