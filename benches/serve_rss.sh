#!/usr/bin/env bash
# Memory of `rnmt serve` under steady load: CLIENTS concurrent clients (LibreTranslate API,
# one Tatoeba test sentence per request) for DURATION seconds against the default server,
# printing its resident memory (VmRSS) and peak (VmHWM) every INTERVAL seconds. Flat RSS
# after warm-up means nothing accumulates per request.
#
#   RNMT_CORPORA=../shared/corpora DURATION=600 CLIENTS=32 benches/serve_rss.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-600}"
CLIENTS="${CLIENTS:-32}"
INTERVAL="${INTERVAL:-30}"
THREADS="${THREADS:-2}"
CORPORA="${RNMT_CORPORA:-corpora}"
TEST="$CORPORA/tatoeba-deu-eng/test.de"
[ -f "$TEST" ] || { echo "no $TEST (set RNMT_CORPORA)" >&2; exit 1; }

cargo build --release --quiet
BIN=target/release/rnmt
WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
echo "SIMD: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(sse4_2|avx|avx2|fma|avx512f|avx512bw|avx512vl|avx512_vnni|amx_tile)$' | tr '\n' ' ')"
echo "$CLIENTS clients for $DURATION s; server --threads $THREADS"

# The load client of serve_load.sh.
awk '/cat > "\$WORK\/client.py" <<.EOF./{f=1;next} /^EOF$/{f=0} f' benches/serve_load.sh > "$WORK/client.py"

"$BIN" serve --port 0 --threads "$THREADS" --model models/tatoeba-de-en 2> "$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 1 600); do
    PORT=$(sed -n 's#^listening on http://127.0.0.1:##p' "$WORK/server.log")
    [ -n "$PORT" ] && curl -sf --max-time 5 "http://127.0.0.1:$PORT/health" >/dev/null && break
    sleep 0.1
done
[ -n "${PORT:-}" ] || { cat "$WORK/server.log" >&2; exit 1; }

python3 "$WORK/client.py" 127.0.0.1 "$PORT" "$CLIENTS" "$DURATION" "$TEST" > "$WORK/client.out" &
CLIENT_PID=$!
printf '| seconds | RSS MB | peak MB | requests |\n| ---: | ---: | ---: | ---: |\n'
start=$(date +%s)
while kill -0 "$CLIENT_PID" 2>/dev/null; do
    rss=$(awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$SERVER_PID/status")
    hwm=$(awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$SERVER_PID/status")
    reqs=$(curl -sf --max-time 5 "http://127.0.0.1:$PORT/metrics" | awk '/^rnmt_http_requests_total\{endpoint="\/translate",status="200"\}/ {n += $2} END {print n + 0}')
    printf '| %s | %s | %s | %s |\n' "$(( $(date +%s) - start ))" "$rss" "$hwm" "$reqs"
    sleep "$INTERVAL"
done
wait "$CLIENT_PID"
echo "client: sentences/s p50 ms p99 ms errors: $(cat "$WORK/client.out")"
