#!/usr/bin/env bash
# Scores a 1,000,000-line hypothesis against its reference with rnmt and with sacreBLEU,
# alternating (ROUNDS rounds each), checks both print the same score, and prints both times
# and the speed ratio as the last line.
#
# Usage (from the repo root): RNMT_CORPORA=../shared/corpora benches/bleu_vs_sacrebleu.sh
# Env: LINES (default 1000000), ROUNDS (default 2), METRIC (bleu or chrf, default bleu).
set -euo pipefail

CORPORA=${RNMT_CORPORA:-corpora}
LINES=${LINES:-1000000}
ROUNDS=${ROUNDS:-2}
METRIC=${METRIC:-bleu}
WORK=${TMPDIR:-/tmp}/rnmt_bleu_bench
REF=$WORK/ref.$LINES.txt
HYP=$WORK/hyp.$LINES.txt

[ -f "$CORPORA/tatoeba-deu-eng/train.en" ] || { echo "no corpora under $CORPORA (set RNMT_CORPORA)" >&2; exit 1; }
python3 -c 'import sacrebleu' 2>/dev/null || pip install --quiet sacrebleu
mkdir -p "$WORK"

if [ ! -f "$HYP" ]; then
  # Reference: real English sentences repeated up to LINES lines. Hypothesis: the same lines
  # perturbed by rules that vary with the line number (dropped words, a swap, lowercasing,
  # a few empty lines), so scores are realistic rather than 100.
  python3 - "$CORPORA" "$LINES" "$REF" "$HYP" <<'PY'
import sys
corpora, n, ref_path, hyp_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
src = []
for f in ["tatoeba-deu-eng/train.en", "multi30k/train.en", "wmt-news/newstest2021_ende.en"]:
    with open(f"{corpora}/{f}", encoding="utf-8") as fh:
        src += [l.rstrip("\n") for l in fh]
with open(ref_path, "w", encoding="utf-8") as r, open(hyp_path, "w", encoding="utf-8") as h:
    for i in range(n):
        line = src[(i * 7919) % len(src)]
        words = line.split(" ")
        k = 3 + i % 5
        hyp = [w for j, w in enumerate(words) if (j + i) % k != k - 1]
        if i % 3 == 0 and len(hyp) > 2:
            hyp[1], hyp[2] = hyp[2], hyp[1]
        out = " ".join(hyp)
        if i % 11 == 0:
            out = out.lower()
        if i % 97 == 0:
            out = ""
        r.write(line + "\n")
        h.write(out + "\n")
PY
fi

cargo build --release --quiet --bin rnmt
RNMT=target/release/rnmt

now() { date +%s.%N; }
rnmt_total=0; sb_total=0
for round in $(seq 1 "$ROUNDS"); do
  t0=$(now); rnmt_out=$("$RNMT" bleu "$REF" -i "$HYP" -m "$METRIC" -w 4 -b -f text); t1=$(now)
  sb_out=$(sacrebleu "$REF" -i "$HYP" -m "$METRIC" -w 4 -b -f text); t2=$(now)
  r=$(echo "$t1 - $t0" | bc -l); s=$(echo "$t2 - $t1" | bc -l)
  printf 'round %d: rnmt %.2f s (%s), sacrebleu %.2f s (%s)\n' "$round" "$r" "$rnmt_out" "$s" "$sb_out"
  [ "$rnmt_out" = "$sb_out" ] || { echo "scores differ: rnmt $rnmt_out, sacrebleu $sb_out" >&2; exit 1; }
  rnmt_total=$(echo "$rnmt_total + $r" | bc -l); sb_total=$(echo "$sb_total + $s" | bc -l)
done
rnmt_avg=$(echo "$rnmt_total / $ROUNDS" | bc -l); sb_avg=$(echo "$sb_total / $ROUNDS" | bc -l)
printf '%s on %d lines: rnmt %.2f s, sacrebleu %.2f s, rnmt is %.1fx faster\n' \
  "$METRIC" "$LINES" "$rnmt_avg" "$sb_avg" "$(echo "$sb_avg / $rnmt_avg" | bc -l)"
