#!/usr/bin/env bash
# Time to BLEU: rnmt's Multi30k de→en recipe against OpenNMT-py 3.5.1's closest model,
# trained side by side on this machine, each pinned to a core of its own for the same
# wall-clock minutes, then scored on Multi30k test2016 with beam 5.
#
#   benches/vs_opennmt.sh [MINUTES]        # default 40; points at MINUTES/4, /2 and MINUTES
#
# Both toolkits get the same data: the subwords of the tokenizer files `rnmt prepare`
# learns for the recipe (8,000 per side, byte-level BPE), which OpenNMT-py reads as
# pre-tokenized text (benches/onmt_ref/subwords.py); its output is decoded with the same
# files. OpenNMT-py's model is the closest it has to the recipe: 2+2 LSTM layers of 256,
# 256-dimensional embeddings, a bidirectional encoder (all layers: OpenNMT-py's `brnn`; the
# recipe's bottom layer only), MLP (additive) attention with input feeding (OpenNMT-py has
# no GNMT wiring), tied output embeddings, dropout 0.3, label smoothing 0.1, Adam at 0.002,
# gradient norm 5, batches of 1024 tokens. rnmt runs configs/multi30k-de-en.toml as it
# is, on one thread, with a checkpoint every 250 steps (the recipe's validation included).
#
# Both train for MINUTES + 1 minutes from one common start, writing checkpoints as they go
# (OpenNMT-py every 100 steps, about as often in wall-clock). At each point T the score is
# that of the last checkpoint written before start + T minutes, translated by its own
# toolkit: beam 5, GNMT length penalty α 0.6, no coverage penalty, one thread. BLEU is
# sacreBLEU's (rnmt bleu: 13a, cased, detokenized). tok/s counts the target tokens
# trained on by T over T, so start-up, data loading, validation and checkpoints are in it.
#
# Environment: RNMT_ONMT_VENV (virtualenv for OpenNMT-py; created with pip if missing;
# default ~/.cache/rnmt-onmt-venv), RNMT_CORPORA, WORK (default target/vs_opennmt),
# CORES ("0 1": rnmt's core, then OpenNMT-py's), POINTS (minutes, default "M/4 M/2 M"),
# LIMIT (test2016 lines, default all 1000).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-40}
case "$minutes" in '' | *[!0-9]*) echo "MINUTES must be a whole number, got $minutes" >&2 && exit 2 ;; esac
[ "$minutes" -ge 4 ] && [ "$minutes" -le 600 ] ||
  { echo "MINUTES must be between 4 and 600, got $minutes" >&2; exit 2; }
points=${POINTS:-"$((minutes / 4)) $((minutes / 2)) $minutes"}
read -r core_rnmt core_onmt <<< "${CORES:-0 1}"
work=${WORK:-target/vs_opennmt}
mkdir -p "$work"

corpora=${RNMT_CORPORA:-corpora}
if [ -z "${RNMT_CORPORA:-}" ] && [ ! -d corpora/multi30k ] && [ -d ../shared/corpora/multi30k ]; then
  corpora=../shared/corpora
fi
m30k=$corpora/multi30k
[ -f "$m30k/train.de" ] || { echo "no $m30k/train.de: set RNMT_CORPORA" >&2; exit 1; }

venv=${RNMT_ONMT_VENV:-$HOME/.cache/rnmt-onmt-venv}
if ! "$venv/bin/python" -c "import onmt, tokenizers" 2> /dev/null; then
  echo "installing OpenNMT-py 3.5.1 into $venv (large download, once)" >&2
  python3 -m venv "$venv"
  # OpenNMT-py 3.5.1 needs torch < 2.3, which was built against NumPy 1.
  "$venv/bin/pip" install --quiet "OpenNMT-py==3.5.1" "torch<2.3" "numpy<2" "tokenizers>=0.19,<0.24"
fi
py=$venv/bin/python
export PYTHONWARNINGS=ignore OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

cargo build --release --quiet --bin rnmt
rnmt=${CARGO_TARGET_DIR:-target}/release/rnmt

# The recipe's data, and the same subwords as text for OpenNMT-py.
data=$work/data
if [ ! -f "$data/prepare.json" ]; then
  "$rnmt" prepare --train "$m30k/train" --valid "$m30k/val" --src-lang de --tgt-lang en \
    --vocab-size 8000 --out "$data" >&2
fi
onmt=$work/onmt
mkdir -p "$onmt"
subwords() { "$py" benches/onmt_ref/subwords.py "$@"; }
for split in train val; do
  subwords encode "$data/tokenizer-src.json" < "$m30k/$split.de" > "$onmt/$split.de"
  subwords encode "$data/tokenizer-tgt.json" < "$m30k/$split.en" > "$onmt/$split.en"
done
head -n "${LIMIT:-1000}" "$m30k/test_2016_flickr.de" > "$work/test.de"
head -n "${LIMIT:-1000}" "$m30k/test_2016_flickr.en" > "$work/test.en"
subwords encode "$data/tokenizer-src.json" < "$work/test.de" > "$onmt/test.de"

rm -rf "$onmt"/model_step_*.pt "$work/rnmt-run"
cat > "$onmt/config.yaml" << EOF
save_data: $onmt/vocab
src_vocab: $onmt/vocab.src
tgt_vocab: $onmt/vocab.tgt
src_vocab_size: 8100
tgt_vocab_size: 8100
overwrite: true
data:
  corpus_1:
    path_src: $onmt/train.de
    path_tgt: $onmt/train.en
  valid:
    path_src: $onmt/val.de
    path_tgt: $onmt/val.en
save_model: $onmt/model
save_checkpoint_steps: 100
keep_checkpoint: -1
train_steps: 10000000
valid_steps: 10000000
report_every: 10
seed: 1
world_size: 1
gpu_ranks: []
encoder_type: brnn
decoder_type: rnn
rnn_type: LSTM
enc_layers: 2
dec_layers: 2
hidden_size: 256
word_vec_size: 256
global_attention: mlp
input_feed: 1
share_decoder_embeddings: true
dropout: 0.3
label_smoothing: 0.1
optim: adam
learning_rate: 0.002
max_grad_norm: 5
batch_type: tokens
batch_size: 1024
EOF
"$venv/bin/onmt_build_vocab" -config "$onmt/config.yaml" -n_sample -1 > "$onmt/vocab.log" 2>&1

echo "training both for $((minutes + 1)) minutes: rnmt on core $core_rnmt, OpenNMT-py on core $core_onmt" >&2
budget=$((minutes + 1))
start=$(date +%s.%N)
taskset -c "$core_rnmt" "$rnmt" train --config configs/multi30k-de-en.toml --threads 1 \
  --set "data=\"$data\"" --set "run_dir=\"$work/rnmt-run\"" --set "max_minutes=$budget.0" \
  --set max_epochs=0 --set valid_every=250 --set keep_last=100000 --set log_every=1 \
  > "$work/rnmt-train.log" 2>&1 &
rnmt_pid=$!
taskset -c "$core_onmt" timeout "$((budget * 60))s" "$venv/bin/onmt_train" \
  -config "$onmt/config.yaml" > "$onmt/train.log" 2>&1 &
onmt_pid=$!
wait "$rnmt_pid" || { tail "$work/rnmt-train.log" >&2; exit 1; }
wait "$onmt_pid" || [ $? = 124 ] || { tail "$onmt/train.log" >&2; exit 1; }

# The last checkpoint written by start + T minutes: "STEP PATH", or nothing.
last_before() { # T PATH... (each ending in its step number)
  local t=$1 best="" step
  shift
  for f in "$@"; do
    [ -e "$f" ] || continue
    awk -v m="$(stat -c %Y "$f")" -v s="$start" -v t="$t" 'BEGIN {exit !(m <= s + 60 * t)}' || continue
    step=${f##*[-_]}
    step=${step%.pt}
    if [ -z "$best" ] || [ "$step" -gt "${best%% *}" ]; then best="$step $f"; fi
  done
  echo "$best"
}
# Target tokens trained on by start + T minutes.
rnmt_tokens() { # T
  python3 -c "
import json, sys
t = float(sys.argv[2]) * 60
print(sum(r['target_tokens'] for r in map(json.loads, open(sys.argv[1]))
          if r.get('kind') == 'train' and r['elapsed_s'] <= t))" "$work/rnmt-run/metrics.jsonl" "$1"
}
onmt_tokens() { # T: report lines carry a wall-clock stamp, the step and the mean batch
  python3 -c "
import re, sys, datetime
start, t = float(sys.argv[2]), float(sys.argv[3]) * 60
tokens, prev = 0.0, 0
for line in open(sys.argv[1]):
    m = re.match(r'\[(\S+ \S+),\d+ INFO\] Step (\d+)/.*bsz: +\d+/ *(\d+)/', line)
    if not m:
        continue
    stamp = datetime.datetime.strptime(m[1], '%Y-%m-%d %H:%M:%S').timestamp()
    step = int(m[2])
    if stamp > start + t:
        break
    tokens += (step - prev) * int(m[3])
    prev = step
print(int(tokens))" "$onmt/train.log" "$start" "$1"
}

bleu() { "$rnmt" bleu "$work/test.en" -i "$1" -f text -b -w 2; }
view=$work/rnmt-view
echo "$(date -u +%F) $(benches/cpu_info.sh); $minutes minutes, side by side, one core each; beam 5, α 0.6, β 0; test2016 ($(wc -l < "$work/test.de") lines)"
printf "%-8s %-11s %8s %8s %8s  %-11s %8s %8s %8s\n" minutes toolkit step "tok/s" BLEU \
  toolkit step "tok/s" BLEU
for t in $points; do
  read -r rstep rpath <<< "$(last_before "$t" "$work"/rnmt-run/checkpoints/step-*)"
  read -r ostep opath <<< "$(last_before "$t" "$onmt"/model_step_*.pt)"
  rbleu=- obleu=-
  if [ -n "${rpath:-}" ]; then # a model folder: the checkpoint beside the run's tokenizers
    rm -rf "$view" && mkdir -p "$view"
    ln -s "$(realpath "$rpath")"/{config.json,model.safetensors} "$view/"
    ln -s "$(realpath "$work/rnmt-run")"/tokenizer-{src,tgt}.json "$view/"
    taskset -c "$core_rnmt" "$rnmt" translate --model "$view" --beam 5 --alpha 0.6 --beta 0 \
      --threads 1 -i "$work/test.de" -o "$work/rnmt-$t.en" &
  fi
  if [ -n "${opath:-}" ]; then
    taskset -c "$core_onmt" "$venv/bin/onmt_translate" -model "$opath" -src "$onmt/test.de" \
      -output "$onmt/hyp-$t.sub" -beam_size 5 -length_penalty wu -alpha 0.6 -batch_size 32 \
      > "$onmt/translate-$t.log" 2>&1 &
  fi
  wait
  [ -n "${rpath:-}" ] && rbleu=$(bleu "$work/rnmt-$t.en")
  if [ -n "${opath:-}" ]; then
    subwords decode "$data/tokenizer-tgt.json" < "$onmt/hyp-$t.sub" > "$onmt/hyp-$t.en"
    obleu=$(bleu "$onmt/hyp-$t.en")
  fi
  rtoks=$(rnmt_tokens "$t") otoks=$(onmt_tokens "$t")
  printf "%-8s %-11s %8s %8.0f %8s  %-11s %8s %8.0f %8s\n" "$t" rnmt "${rstep:--}" \
    "$(echo "$rtoks / ($t * 60)" | bc -l)" "$rbleu" OpenNMT-py "${ostep:--}" \
    "$(echo "$otoks / ($t * 60)" | bc -l)" "$obleu"
done
