#!/usr/bin/env bash
# One-sentence latency of `rnmt translate` with the default model, two binaries side by
# side (or one), alternating in every round:
#   cold: a whole process translating "Der Hund jagt die Katze." — start, model load,
#         translation — wall time and peak RSS (/usr/bin/time);
#   warm: the time per sentence when one process translates N Tatoeba test sentences one
#         at a time (--batch-size 1, beam 5): (time for N+1 sentences − time for 1) / N.
#
#   benches/latency.sh OLD_BINARY NEW_BINARY      (or one binary)
#   ROUNDS=10 N=200 THREADS=0 benches/latency.sh target/release/rnmt
#   benches/latency.sh target/release/rnmt "target/release/rnmt --int8"
#
# An argument of several words is a binary and flags for `rnmt translate`.
#
# Needs RNMT_CORPORA (Tatoeba's test.de) for the warm figure. Prints the CPU model and
# flags first, then the median and range of each figure.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BINARY [BINARY]" >&2; exit 2; }
rounds=${ROUNDS:-10} n=${N:-200} threads=${THREADS:-0}
corpora=${RNMT_CORPORA:?set RNMT_CORPORA to the corpora folder}
src="$corpora/tatoeba-deu-eng/test.de"
[ -f "$src" ] || { echo "missing $src" >&2; exit 1; }
command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (Debian: time)" >&2; exit 1; }

echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)"
echo "flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512_vnni|avx512_bf16|amx_tile)$' | xargs)"
echo "cores: $(nproc), threads: $threads, rounds: $rounds, warm sentences: $n"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
head -n 1 "$src" >"$tmp/one.de"
head -n $((n + 1)) "$src" >"$tmp/many.de"
sentence="Der Hund jagt die Katze."

for round in $(seq "$rounds"); do
  for i in $(seq $#); do
    read -r -a cmd <<<"${!i}"
    bin=${cmd[0]} flags=("${cmd[@]:1}")
    /usr/bin/time -f "%e %M" -o "$tmp/t" "$bin" translate "${flags[@]}" --threads "$threads" "$sentence" >/dev/null
    echo "$(cat "$tmp/t")" >>"$tmp/cold.$i"
    s1=$(date +%s.%N)
    "$bin" translate "${flags[@]}" --threads "$threads" --batch-size 1 -i "$tmp/one.de" >/dev/null
    s2=$(date +%s.%N)
    "$bin" translate "${flags[@]}" --threads "$threads" --batch-size 1 -i "$tmp/many.de" >/dev/null
    s3=$(date +%s.%N)
    python3 -c "print(((($s3)-($s2))-(($s2)-($s1)))/$n*1000)" >>"$tmp/warm.$i"
  done
done

for i in $(seq $#); do
  python3 - "${!i}" "$tmp/cold.$i" "$tmp/warm.$i" <<'EOF'
import statistics, sys
name, cold, warm = sys.argv[1:]
rows = [line.split() for line in open(cold)]
wall = sorted(float(r[0]) * 1000 for r in rows)
rss = sorted(int(r[1]) / 1024 for r in rows)
per = sorted(float(x) for x in open(warm))
def fig(xs, unit):
    return f"{statistics.median(xs):.1f} {unit} ({xs[0]:.1f}–{xs[-1]:.1f})"
print(f"{name}\n  cold wall {fig(wall, 'ms')}, peak RSS {fig(rss, 'MB')}\n  warm, per sentence (beam 5, batch 1): {fig(per, 'ms')}")
EOF
done
