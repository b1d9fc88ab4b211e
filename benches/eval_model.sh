#!/usr/bin/env bash
# Scores a model folder on the test sets of its language pair with rnmt bleu (BLEU and chrF,
# sacreBLEU signatures). Usage: benches/eval_model.sh MODEL_DIR SRC TGT [BEAM]
#   RNMT_CORPORA=../shared/corpora benches/eval_model.sh models/tatoeba-de-en de en 5
set -euo pipefail
model=$1 src=$2 tgt=$3 beam=${4:-5}
corpora=${RNMT_CORPORA:-corpora}
rnmt=${RNMT:-target/release/rnmt}
out=$(mktemp -d)
sets=("tatoeba-deu-eng/test")
case "$src-$tgt" in
  de-en) sets+=("wmt-news/newstest2021_deen") ;;
  en-de) sets+=("wmt-news/newstest2021_ende") ;;
esac
sets+=("multi30k/test_2016_flickr")
for set in "${sets[@]}"; do
  name=$(echo "$set" | tr / _)
  t0=$(date +%s%N)
  "$rnmt" translate --model "$model" --beam "$beam" -i "$corpora/$set.$src" -o "$out/$name.hyp"
  t1=$(date +%s%N)
  lines=$(wc -l < "$corpora/$set.$src")
  echo "== $set ($lines sentences, beam $beam, $(( (t1 - t0) / 1000000 )) ms)"
  "$rnmt" bleu "$corpora/$set.$tgt" -i "$out/$name.hyp" -m bleu chrf -f text
done
rm -rf "$out"
