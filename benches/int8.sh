#!/usr/bin/env bash
# int8 against f32 search (`rnmt translate --int8`), side by side: for each model and its
# test set, beam 1 and 5, 1 and 2 threads, the two runs alternating ROUNDS times; prints
# sentences/s (median over the rounds) and BLEU of each, and how many lines differ.
#
#   RNMT_CORPORA=../shared/corpora benches/int8.sh
#   ROUNDS=3 BIN=target/release/rnmt BEAMS="1 5" THREADS="1 2" BATCH=32 N=0 benches/int8.sh
#
# BATCH is --batch-size (1: one sentence at a time, as a server under light load
# translates); N > 0 takes the first N lines of each test set.
#
# Prints the CPU model and its SIMD flags first: the int8 kernel is chosen at run time.
# Not a test: speed is measured here, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-2}
corpora=${RNMT_CORPORA:?set RNMT_CORPORA to the corpora folder}
bin=${BIN:-target/release/rnmt}
batch=${BATCH:-32} n=${N:-0}
[ -x "$bin" ] || cargo build --release --quiet

echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores"
echo "batch size: $batch"
echo "flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|f16c|avx512f|avx512bw|avx512_vnni|avx512_bf16|amx_tile)$' | xargs)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# model  source  reference (the Multi30k models ship as recipes, without weights: the
# Tatoeba model stands in on Multi30k's test2016, out of its domain)
sets=(
    "models/tatoeba-de-en $corpora/tatoeba-deu-eng/test.de $corpora/tatoeba-deu-eng/test.en"
    "models/tatoeba-en-de $corpora/tatoeba-deu-eng/test.en $corpora/tatoeba-deu-eng/test.de"
    "models/tatoeba-de-en $corpora/multi30k/test_2016_flickr.de $corpora/multi30k/test_2016_flickr.en"
)

median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }

printf '\n| model | test set | beam | threads | f32 sent/s | int8 sent/s | int8 / f32 | f32 BLEU | int8 BLEU | lines that differ |\n'
printf '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n'
for set in "${sets[@]}"; do
    read -r model src ref <<<"$set"
    if [ "$n" -gt 0 ]; then
        head -n "$n" "$src" >"$tmp/src"
        head -n "$n" "$ref" >"$tmp/ref"
        src_name=$(basename "$src") src="$tmp/src" ref="$tmp/ref"
    else
        src_name=$(basename "$src")
    fi
    lines=$(wc -l <"$src")
    for beam in ${BEAMS:-1 5}; do
        for threads in ${THREADS:-1 2}; do
            : >"$tmp/f32.rate"
            : >"$tmp/int8.rate"
            for _ in $(seq 1 "$rounds"); do
                for kind in f32 int8; do
                    flag=()
                    [ "$kind" = int8 ] && flag=(--int8)
                    start=$(date +%s.%N)
                    "$bin" translate -m "$model" -b "$beam" --threads "$threads" "${flag[@]}" \
                        --batch-size "$batch" -i "$src" -o "$tmp/$kind.out" 2>/dev/null
                    end=$(date +%s.%N)
                    python3 -c "print($lines / ($end - $start))" >>"$tmp/$kind.rate"
                done
            done
            f32=$(median <"$tmp/f32.rate")
            int8=$(median <"$tmp/int8.rate")
            bleu() { "$bin" bleu "$ref" -i "$1" | python3 -c 'import json, sys; print(json.load(sys.stdin)["score"])'; }
            differ=$(paste -d '\t' "$tmp/f32.out" "$tmp/int8.out" | awk -F '\t' '$1 != $2' | wc -l)
            printf '| %s | %s | %s | %s | %.1f | %.1f | %.2f× | %s | %s | %s of %s |\n' \
                "$(basename "$model")" "$src_name" "$beam" "$threads" "$f32" "$int8" \
                "$(python3 -c "print($int8 / $f32)")" \
                "$(bleu "$tmp/f32.out")" "$(bleu "$tmp/int8.out")" "$differ" "$lines"
        done
    done
done
