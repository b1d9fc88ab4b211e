#!/usr/bin/env bash
# A recipe search at a fixed wall-clock budget: each variant of a training config is
# trained for MINUTES on one core, and judged on validation data only.
#
#   benches/recipe_search.sh VARIANTS [MINUTES]     # default 60 minutes per variant
#   e.g. benches/recipe_search.sh benches/recipes/multi30k-de-en.txt 60
#
# VARIANTS has one variant per line: a name, then `--set KEY=VALUE` overrides of CONFIG
# (default configs/multi30k-de-en.toml) and optionally `prepare=ARG,ARG,…`, extra
# `rnmt prepare` arguments (e.g. prepare=--model-type,unigram) for a variant with other
# subwords. `#` starts a comment. Every variant trains on one thread; PARALLEL=2 trains two
# at a time, each pinned to a core of its own (PARALLEL=1 when the other core is busy;
# CORE picks its core).
#
# The validation set is split in two: training validates (greedy BLEU, checkpoint
# selection) and, at its end, tunes α and β on the first VALID_TUNE lines (the trainer's
# valid_max_sentences); the rest is held out and translated once by the variant's best/
# with its tuned α/β at beam 5. Variants are ranked on that held-out BLEU. The test sets
# are never read. Results go to WORK/results.tsv; a variant already there is not run
# again, so an interrupted search continues where it stopped.
#
# Environment: RNMT_CORPORA, CONFIG, PAIR (default multi30k de en: corpus folder, source
# and target language), WORK (default target/recipe_search), PARALLEL (1 or 2, default
# 1), CORE (the core of PARALLEL=1, default 0), VALID_TUNE (500), VOCAB (8000).
set -euo pipefail
cd "$(dirname "$0")/.."
variants=${1:-}
minutes=${2:-60}
[ -f "$variants" ] || { echo "usage: benches/recipe_search.sh VARIANTS [MINUTES]" >&2; exit 2; }
case "$minutes" in '' | *[!0-9.]*) echo "MINUTES must be a number, got $minutes" >&2 && exit 2 ;; esac
config=${CONFIG:-configs/multi30k-de-en.toml}
read -r corpus src tgt <<< "${PAIR:-multi30k de en}"
work=${WORK:-target/recipe_search}
parallel=${PARALLEL:-1}
case "$parallel" in 1 | 2) ;; *) echo "PARALLEL must be 1 or 2, got $parallel" >&2 && exit 2 ;; esac
tune=${VALID_TUNE:-500}
mkdir -p "$work"

corpora=${RNMT_CORPORA:-corpora}
if [ -z "${RNMT_CORPORA:-}" ] && [ ! -d "corpora/$corpus" ] && [ -d "../shared/corpora/$corpus" ]; then
  corpora=../shared/corpora
fi
[ -f "$corpora/$corpus/train.$src" ] || { echo "no $corpora/$corpus/train.$src: set RNMT_CORPORA" >&2; exit 1; }

cargo build --release --quiet --bin rnmt
rnmt=${CARGO_TARGET_DIR:-target}/release/rnmt

# The held-out half of the validation set.
tail -n +"$((tune + 1))" "$corpora/$corpus/val.$src" > "$work/heldout.$src"
tail -n +"$((tune + 1))" "$corpora/$corpus/val.$tgt" > "$work/heldout.$tgt"
[ -s "$work/heldout.$src" ] || { echo "the validation set has no lines after the first $tune" >&2; exit 1; }

results=$work/results.tsv
[ -f "$results" ] ||
  printf "variant\tminutes\tsteps\tbest_valid_bleu_greedy\talpha\tbeta\theldout_bleu_beam5\tsettings\n" > "$results"

# data_dir NAME WORDS...: the prepared data of a variant's prepare= words (prepared once
# and shared by every variant with the same words). Runs in the foreground, before the
# variant is launched, so that two variants trained side by side never prepare one folder.
data_dir() {
  local name=$1 prep=() w
  shift
  for w in "$@"; do
    case "$w" in prepare=*) IFS=, read -r -a prep <<< "${w#prepare=}" ;; esac
  done
  local data
  data=$work/data-$(printf "%s\n" "${prep[@]}" | sha256sum | cut -c1-12)
  if [ ! -f "$data/prepare.json" ]; then
    [[ " ${prep[*]} " == *" --vocab-size "* ]] || prep+=(--vocab-size "${VOCAB:-8000}")
    "$rnmt" prepare --train "$corpora/$corpus/train" --valid "$corpora/$corpus/val" \
      --src-lang "$src" --tgt-lang "$tgt" "${prep[@]}" --out "$data" \
      > "$work/$name.prepare.log" 2>&1 || { echo "$name: prepare failed, see $work/$name.prepare.log" >&2; return 1; }
  fi
  echo "$data"
}

# run_variant CORE DATA NAME WORDS...: trains on DATA, scores; appends a row.
run_variant() {
  local core=$1 data=$2 name=$3
  shift 3
  local sets=() w
  for w in "$@"; do
    case "$w" in prepare=*) ;; *) sets+=("$w") ;; esac
  done
  local run=$work/runs/$name
  rm -rf "$run"
  taskset -c "$core" "$rnmt" train --config "$config" --threads 1 --set "data=\"$data\"" \
    --set "run_dir=\"$run\"" --set "max_minutes=$minutes" --set max_epochs=0 \
    --set "valid_max_sentences=$tune" --set tune_search=true "${sets[@]}" \
    > "$work/$name.train.log" 2>&1 || { echo "$name: training failed, see $work/$name.train.log" >&2; return 1; }
  local alpha beta
  read -r alpha beta < <(python3 -c "
import json, sys
c = json.load(open(sys.argv[1]))
print(c['decode_alpha'], c['decode_beta'])" "$run/best/config.json")
  taskset -c "$core" "$rnmt" translate --model "$run/best" --beam 5 --threads 1 \
    -i "$work/heldout.$src" -o "$work/$name.heldout.$tgt"
  local heldout
  heldout=$("$rnmt" bleu "$work/heldout.$tgt" -i "$work/$name.heldout.$tgt" -f text -b -w 2)
  read -r steps best < <(python3 -c "
import json, sys
steps, best = 0, float('nan')
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get('kind') == 'train':
        steps = r['step']
    elif r.get('kind') == 'valid' and r.get('best'):
        best = r['bleu']
print(steps, f'{best:.2f}')" "$run/metrics.jsonl")
  printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$name" "$minutes" "$steps" "$best" "$alpha" "$beta" \
    "$heldout" "$*" >> "$results"
  echo "$name: held-out BLEU $heldout (α $alpha, β $beta), best greedy validation BLEU $best, $steps steps"
}

benches/cpu_info.sh
echo "$config, $minutes minutes per variant on one thread, $parallel at a time; held out: validation lines after $tune"
pending=()
while read -r name rest; do
  case "$name" in '' | '#'*) continue ;; esac
  if cut -f1 "$results" | grep -qx "$name"; then
    echo "$name: done before, skipped"
    continue
  fi
  pending+=("$name ${rest%%#*}")
done < "$variants"

first_core=${CORE:-0}
case "$first_core" in '' | *[!0-9]*) echo "CORE must be a core number, got $first_core" >&2 && exit 2 ;; esac
[ "$parallel" = 2 ] && first_core=0
core=$first_core
for entry in "${pending[@]}"; do
  # shellcheck disable=SC2086 # the variant's words are its arguments
  data=$(data_dir $entry) || exit 1
  # shellcheck disable=SC2086
  run_variant "$core" "$data" $entry &
  if [ "$parallel" = 2 ] && [ "$core" = 0 ]; then
    core=1
    continue
  fi
  wait
  core=$first_core
done
wait

echo
echo "ranked by held-out BLEU (beam 5, tuned α/β):"
(head -n 1 "$results" && tail -n +2 "$results" | sort -t$'\t' -k7,7gr) | column -t -s$'\t'
