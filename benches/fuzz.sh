#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets) for SECONDS each and prints executions and
# crashes per target, with the CPU it ran on. Needs cargo-fuzz (`cargo install cargo-fuzz`) and
# libFuzzer's nightly-only flags, which the stable toolchain accepts with RUSTC_BOOTSTRAP=1.
# Crashes land in fuzz/artifacts/TARGET/; each one found becomes a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH="${1:-60}"
export RUSTC_BOOTSTRAP=1
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512_vnni|avx512_bf16)$' | tr '\n' ' ')"
targets=$(cd fuzz && cargo fuzz list)
cd fuzz
cargo fuzz build --release >/dev/null 2>&1 || cargo fuzz build --release
printf '%-16s %12s %8s %s\n' target executions crashes seconds
for t in $targets; do
  mkdir -p "corpus/$t"
  log=$(mktemp)
  set +e
  cargo fuzz run --release "$t" "corpus/$t" -- -max_total_time="$SECONDS_EACH" -rss_limit_mb=4096 \
    -max_len=4096 -print_final_stats=1 >"$log" 2>&1
  set -e
  execs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
  crashes=$(ls "artifacts/$t" 2>/dev/null | grep -c -E '^(crash|oom|timeout|leak)-' || true)
  printf '%-16s %12s %8s %s\n' "$t" "${execs:-?}" "$crashes" "$SECONDS_EACH"
  rm -f "$log"
done
