#!/usr/bin/env bash
# rnmt against the PyTorch reference model (benches/torch_ref) on this machine: the same
# model, the same initial weights, the same Multi30k de→en batches, the same threads.
#
#   benches/vs_pytorch.sh train  [A|B] [THREADS]   # last line: train tok/s: rnmt X pytorch Y ratio Z
#   benches/vs_pytorch.sh decode [A|B] [THREADS]   # last line: decode sent/s: rnmt X pytorch Y ratio Z
#   benches/vs_pytorch.sh roofline [A|B]           # FLOPs per training token, sgemm peak, % reached
#
# A = embeddings 256, hidden 256; B = 512/512 (configs/multi30k-de-en.toml otherwise:
# 2+2 layers, bidirectional bottom layer, normalised additive attention, GNMT wiring,
# tied output). THREADS defaults to 2. ratio = rnmt / pytorch (above 1: rnmt is faster).
# CELL=gru (default lstm) makes every layer a GRU in both (`--set model.cell="gru"`;
# torch.nn.GRU on the PyTorch side), e.g. `CELL=gru benches/vs_pytorch.sh train A 1`.
#
# train: dumps the first STEPS batches of epoch 0 and rnmt's initial model
# (examples/dump_batches.rs), checks that PyTorch reproduces rnmt's loss and gradient
# norm on them (dropout off), then runs `rnmt train --set max_steps=STEPS` and
# benches/torch_ref/train.py alternately ROUNDS times. tok/s = target tokens / step time
# over the steps after WARMUP (rnmt: from metrics.jsonl), median over the rounds; peak
# RSS from /usr/bin/time -v.
# decode: trains an rnmt model for DECODE_TRAIN_STEPS steps (or uses MODEL=DIR, a model
# folder trained on the same prepared data), then decodes Multi30k test2016 (LIMIT
# lines) at beam 1 and beam 5 with `rnmt translate` and benches/torch_ref/decode.py from
# the same weights, alternately ROUNDS times; sent/s is wall clock of the whole command
# (model loading and, for PyTorch, `import torch` included), median over rounds; BLEU of
# both outputs on the same lines. SHORTLIST=1 decodes with `rnmt translate --shortlist`
# (learning MODEL/shortlist.safetensors from Multi30k train first if it is missing;
# SHORTLIST_SIZE sets --shortlist-size), PyTorch with the full vocabulary. INT8=1 decodes
# with `rnmt translate --int8` (PyTorch stays f32: the reference the goal is set against).
# roofline: matmul FLOPs per target token on the first STEPS batches
# (benches/torch_ref/roofline.py), this machine's sgemm peak on 1 and 2 threads through
# the gemm crate (examples/lstm_bench.rs), and, given TOKS="1=X,2=Y" (rnmt train tok/s
# per thread count, e.g. from the train mode), the fraction of the peak reached.
#
# Environment: RNMT_BENCH_VENV (virtualenv with torch; created with pip if missing;
# default ~/.cache/rnmt-bench-venv), TORCH_PIP_ARGS (extra pip arguments, e.g.
# "--index-url https://download.pytorch.org/whl/cpu"), RNMT_CORPORA, WORK (default
# target/vs_pytorch), CELL (lstm | gru), ROUNDS (3), STEPS (60), WARMUP (10),
# MAX_TOKENS (1024), DECODE_TRAIN_STEPS (600), LIMIT (1000), MODEL, SHORTLIST,
# SHORTLIST_SIZE, INT8, PRECISION (train: f32 or bf16, rnmt's `precision`).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
size=${2:-A}
threads=${3:-2}
case "$mode" in train | decode | roofline) ;; *)
  echo "usage: benches/vs_pytorch.sh train|decode|roofline [A|B] [THREADS]" >&2
  exit 2
  ;;
esac
case "$size" in
  A) width=256 ;;
  B) width=512 ;;
  *) echo "config must be A (256) or B (512), got $size" >&2 && exit 2 ;;
esac
cell=${CELL:-lstm}
case "$cell" in lstm | gru) ;; *) echo "CELL must be lstm or gru, got $cell" >&2 && exit 2 ;; esac
tag=${cell#lstm} # file name suffix: none for the LSTM (the names before CELL), -gru
tag=${tag:+-$tag}
rounds=${ROUNDS:-3} steps=${STEPS:-60} warmup=${WARMUP:-10}
work=${WORK:-target/vs_pytorch}
mkdir -p "$work"
[ -x /usr/bin/time ] || { echo "/usr/bin/time is needed (apt-get install time)" >&2; exit 1; }

corpora=${RNMT_CORPORA:-corpora}
if [ -z "${RNMT_CORPORA:-}" ] && [ ! -d corpora/multi30k ] && [ -d ../shared/corpora/multi30k ]; then
  corpora=../shared/corpora
fi
[ -f "$corpora/multi30k/train.de" ] || { echo "no $corpora/multi30k/train.de: set RNMT_CORPORA" >&2; exit 1; }

venv=${RNMT_BENCH_VENV:-$HOME/.cache/rnmt-bench-venv}
if [ "$mode" != roofline ] && ! "$venv/bin/python" -c "import torch" 2> /dev/null; then
  echo "installing torch into $venv (large download, once)" >&2
  python3 -m venv "$venv"
  # shellcheck disable=SC2086 # TORCH_PIP_ARGS is a list of arguments
  "$venv/bin/pip" install --quiet torch ${TORCH_PIP_ARGS:-}
fi
py="$venv/bin/python"
export PYTHONWARNINGS=ignore OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads

cargo build --release --quiet --bin rnmt --example dump_batches
bin=${CARGO_TARGET_DIR:-target}/release
rnmt=$bin/rnmt

# The benchmark's data: no validation set, so `rnmt train` spends its time training.
data=$work/multi30k-de-en-8000
if [ ! -f "$data/prepare.json" ]; then
  "$rnmt" prepare --train "$corpora/multi30k/train" --src-lang de --tgt-lang en \
    --vocab-size 8000 --out "$data" >&2
fi
sets=(--set "data=\"$data\"" --set "model.embedding_size=$width" --set "model.hidden_size=$width"
  --set "threads=$threads" --set "max_tokens=${MAX_TOKENS:-1024}" --set valid_every=0
  --set max_epochs=0 --set max_minutes=0.0 --set log_every=1 --set "max_steps=$steps"
  --set "model.cell=\"$cell\"")
# PRECISION=bf16: rnmt trains with the output layer's products in bf16 on AMX (PyTorch stays f32).
[ -n "${PRECISION:-}" ] && sets+=(--set "precision=\"$PRECISION\"")
config=configs/multi30k-de-en.toml

peak_mib() { # the `time -v` report → peak RSS in MiB
  awk -F: '/Maximum resident set size/ {printf "%.0f", $2 / 1024}' "$1"
}
median() { printf "%s\n" "$@" | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
batches=$work/batches-$size$tag.jsonl init=$work/init-$size$tag
if [ "$mode" != decode ]; then
  "$bin/examples/dump_batches" --config "$config" "${sets[@]}" --batches "$steps" \
    --out "$batches" --model-out "$init" --check-steps 3 2> "$work/dump.log" ||
    { cat "$work/dump.log" >&2; exit 1; }
fi

if [ "$mode" = roofline ]; then
  cargo build --release --quiet --example lstm_bench
  toks=()
  [ -n "${TOKS:-}" ] && toks=(--tokens-per-s "$TOKS")
  python3 benches/torch_ref/roofline.py --batches "$batches" --config "$init/config.json" \
    --lstm-bench "$bin/examples/lstm_bench" --threads 1,2 "${toks[@]}"
  exit 0
fi

if [ "$mode" = train ]; then
  "$py" benches/torch_ref/train.py --model "$init" --batches "$batches" --threads "$threads" --check |
    tail -n 1
  echo "config $size (emb/hidden $width, $cell), $threads thread(s), $steps steps ($warmup warm-up), $rounds rounds"
  benches/cpu_info.sh
  # Final losses differ only through dropout masks (and float rounding): a sanity check
  # that both frameworks train the same model on the same batches.
  printf "%-6s %14s %14s %12s %12s %11s %11s\n" round "rnmt tok/s" "pytorch tok/s" "rnmt MiB" \
    "pytorch MiB" "rnmt loss" "torch loss"
  ours=() theirs=() our_mem=() their_mem=()
  for r in $(seq "$rounds"); do
    run=$work/run-$size$tag-$threads
    rm -rf "$run"
    /usr/bin/time -v -o "$work/time-rnmt" "$rnmt" train --config "$config" "${sets[@]}" \
      --set "run_dir=\"$run\"" --set "max_steps=$steps" > /dev/null 2> "$work/rnmt.log" ||
      { tail "$work/rnmt.log" >&2; exit 1; }
    read -r tps loss < <(python3 benches/train_tok_s.py "$run/metrics.jsonl" "$warmup")
    /usr/bin/time -v -o "$work/time-torch" "$py" benches/torch_ref/train.py --model "$init" \
      --batches "$batches" --steps "$steps" --warmup "$warmup" --threads "$threads" \
      > "$work/torch.log"
    torch_tps=$(awk '/^tokens\/s/ {print $2}' "$work/torch.log")
    torch_loss=$(awk '/^final loss/ {print $3}' "$work/torch.log")
    ours+=("$tps") theirs+=("$torch_tps")
    our_mem+=("$(peak_mib "$work/time-rnmt")") their_mem+=("$(peak_mib "$work/time-torch")")
    printf "%-6s %14s %14s %12s %12s %11s %11s\n" "$r" "$tps" "$torch_tps" "${our_mem[-1]}" \
      "${their_mem[-1]}" "$loss" "$torch_loss"
  done
  a=$(median "${ours[@]}") b=$(median "${theirs[@]}")
  echo "peak RSS MiB: rnmt $(median "${our_mem[@]}") pytorch $(median "${their_mem[@]}")"
  echo "train tok/s: rnmt $a pytorch $b ratio $(ratio "$a" "$b")"
  exit 0
fi

# decode
model=${MODEL:-}
if [ -z "$model" ]; then
  run=$work/decode-model-$size$tag
  if [ ! -f "$run/best/config.json" ]; then
    rm -rf "$run"
    echo "training the decode model: ${DECODE_TRAIN_STEPS:-600} steps into $run" >&2
    "$rnmt" train --config "$config" "${sets[@]}" --set "run_dir=\"$run\"" \
      --set "max_steps=${DECODE_TRAIN_STEPS:-600}" > /dev/null 2> "$work/decode-train.log" ||
      { tail "$work/decode-train.log" >&2; exit 1; }
  fi
  model=$run/best
fi
[ -f "$model/model.safetensors" ] || { echo "MODEL=$model has no model.safetensors" >&2; exit 1; }
decode_args=()
if [ "${SHORTLIST:-0}" = 1 ]; then
  if [ ! -f "$model/shortlist.safetensors" ]; then
    "$rnmt" shortlist --model "$model" --train "$corpora/multi30k/train" --src-lang de --tgt-lang en
  fi
  decode_args=(--shortlist --shortlist-size "${SHORTLIST_SIZE:-500,50}")
fi
[ "${INT8:-0}" = 1 ] && decode_args+=(--int8)
head -n "${LIMIT:-1000}" "$corpora/multi30k/test_2016_flickr.de" > "$work/test.de"
head -n "${LIMIT:-1000}" "$corpora/multi30k/test_2016_flickr.en" > "$work/test.en"
n=$(wc -l < "$work/test.de")
"$bin/examples/dump_batches" --config "$config" "${sets[@]}" --batches 0 --out /dev/null \
  --encode-source "$work/test.de" --encoded-out "$work/test.ids.jsonl" 2> /dev/null
wall() { # OUT command... → sentences/s, wall clock; stdout into OUT
  local t0 t1 out=$1
  shift
  t0=$(date +%s.%N)
  "$@" > "$out"
  t1=$(date +%s.%N)
  awk -v n="$n" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", n / (b - a)}'
}
echo "config $size (emb/hidden $width, $cell), $threads thread(s), $n sentences, $rounds rounds, model $model${decode_args[*]:+, rnmt ${decode_args[*]}}"
benches/cpu_info.sh
printf "%-5s %-6s %14s %14s\n" beam round "rnmt sent/s" "pytorch sent/s"
summary=()
for beam in 1 5; do
  ours=() theirs=()
  for r in $(seq "$rounds"); do
    ours+=("$(wall "$work/rnmt.hyp" "$rnmt" translate --model "$model" --beam "$beam" --threads "$threads" \
      --batch-size 32 --input "$work/test.de" "${decode_args[@]}")")
    theirs+=("$(wall /dev/null "$py" benches/torch_ref/decode.py --model "$model" \
      --input "$work/test.ids.jsonl" --output "$work/torch.ids.jsonl" --beam "$beam" \
      --threads "$threads" --batch-size 32)")
    printf "%-5s %-6s %14s %14s\n" "$beam" "$r" "${ours[-1]}" "${theirs[-1]}"
  done
  # Same weights, same search: the translations should agree except where float
  # rounding breaks a near-tie.
  "$bin/examples/dump_batches" --config "$config" "${sets[@]}" --batches 0 --out /dev/null \
    --decode-target "$work/torch.ids.jsonl" --decoded-out "$work/torch.hyp" 2> /dev/null
  same=$(paste -d '\t' "$work/rnmt.hyp" "$work/torch.hyp" | awk -F '\t' '$1 == $2' | wc -l)
  echo "beam $beam: $same of $n translations identical in rnmt and pytorch; BLEU rnmt" \
    "$("$rnmt" bleu "$work/test.en" -i "$work/rnmt.hyp" -f text -w 1 | awk '{print $3}')" \
    "pytorch $("$rnmt" bleu "$work/test.en" -i "$work/torch.hyp" -f text -w 1 | awk '{print $3}')"
  a=$(median "${ours[@]}") b=$(median "${theirs[@]}")
  summary+=("beam $beam: rnmt $a pytorch $b ratio $(ratio "$a" "$b")")
done
printf "%s\n" "${summary[@]}"
# The headline: beam 5, the setting translations are made with.
echo "decode sent/s: ${summary[-1]#beam 5: }"
