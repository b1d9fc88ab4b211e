#!/usr/bin/env bash
# Proves the PyTorch reference computes rnmt's model: for config A, B and variants
# covering every attention kind, input feeding, all-bidirectional encoders, residuals,
# untied outputs, deeper stacks, GRU cells and the conditional GRU, rnmt and PyTorch
# start from the same weights and take 3 Adam steps on the same Multi30k batches
# (dropout off); loss, NLL and gradient norm must agree to 1e-3 relative at every step. Exit status 1 on the first disagreement.
#
#   DATA=target/vs_pytorch/multi30k-de-en-8000 benches/torch_ref/check.sh
#
# DATA: a folder written by `rnmt prepare` (benches/vs_pytorch.sh creates this one);
# RNMT_BENCH_VENV: the virtualenv with torch (default ~/.cache/rnmt-bench-venv).
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${DATA:-target/vs_pytorch/multi30k-de-en-8000}
[ -f "$data/prepare.json" ] || { echo "DATA=$data is not a prepared folder (run benches/vs_pytorch.sh train first)" >&2; exit 1; }
py=${RNMT_BENCH_VENV:-$HOME/.cache/rnmt-bench-venv}/bin/python
cargo build --release --quiet --example dump_batches
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
variants=(
  "A|"
  "B|model.embedding_size=512 model.hidden_size=512"
  "dot|model.attention=\"dot\""
  "general+input feeding|model.attention=\"general\" model.input_feeding=true"
  "additive+all bidirectional+residual 2+untied|model.attention=\"additive\" model.bidirectional=\"all\" model.residual_from=2 model.tie_target_embeddings=false"
  "multi-head, 3+3 layers|model.attention=\"multi_head_additive\" model.encoder_layers=3 model.decoder_layers=3 model.residual_from=2"
  "GRU A|model.cell=\"gru\""
  "GRU general+input feeding|model.cell=\"gru\" model.attention=\"general\" model.input_feeding=true"
  "GRU multi-head+all bidirectional+residual 2|model.cell=\"gru\" model.attention=\"multi_head_additive\" model.bidirectional=\"all\" model.residual_from=2 model.tie_target_embeddings=false"
  "cGRU|model.cell=\"gru\" model.cgru=true"
)
for v in "${variants[@]}"; do
  name=${v%%|*}
  sets=(--set "data=\"$data\"" --set threads=1 --set max_steps=3)
  for s in ${v#*|}; do sets+=(--set "$s"); done
  target/release/examples/dump_batches --config configs/multi30k-de-en.toml "${sets[@]}" \
    --batches 3 --out "$work/b.jsonl" --model-out "$work/m" --check-steps 3 2> "$work/log" ||
    { cat "$work/log" >&2; exit 1; }
  printf "%-48s " "$name:"
  PYTHONWARNINGS=ignore "$py" benches/torch_ref/train.py --model "$work/m" --batches "$work/b.jsonl" \
    --threads 1 --check | tail -n 1
done
