#!/usr/bin/env bash
# Load test of `rnmt serve` on loopback: 1, 8, 32 and 128 concurrent clients, each sending
# real Tatoeba test sentences (one per request, LibreTranslate API) for DURATION seconds,
# against the server with dynamic batching (the defaults) and with --max-batch-tokens 1
# (one sentence at a time, as other servers translate), side by side; and offline
# `rnmt translate` on the same sentences as the reference.
#
#   RNMT_CORPORA=../shared/corpora benches/serve_load.sh
#   DURATION=10 CLIENTS="1 8 32 128" THREADS=2 REPEAT=3 benches/serve_load.sh
#   BATCHED_FLAGS="--batch-workers 2" benches/serve_load.sh   # extra flags, batched server only
#   CLIENT=python benches/serve_load.sh   # Python client threads instead of wrk
#
# Both servers run side by side; at each level the two are loaded in turn, REPEAT times,
# so that a change in the machine's load falls on both alike. Each turn is a row.
#
# Prints throughput (sentences/s), p50/p99 latency, errors, the server's peak RSS, and the
# CPU with its SIMD flags. Not a test: speed is measured here, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-20}"
CLIENTS="${CLIENTS:-1 8 32 128}"
THREADS="${THREADS:-2}"
SENTENCES="${SENTENCES:-1000}"
REPEAT="${REPEAT:-1}"
# The load generator: wrk (benches/serve_client.lua; the default where it is installed,
# apt-get install wrk) or python (32 client threads in one CPython process).
CLIENT="${CLIENT:-$(command -v wrk >/dev/null && echo wrk || echo python)}"
case "$CLIENT" in wrk | python) ;; *) echo "CLIENT must be wrk or python, got $CLIENT" >&2 && exit 2 ;; esac
CORPORA="${RNMT_CORPORA:-corpora}"
TEST="$CORPORA/tatoeba-deu-eng/test.de"
[ -f "$TEST" ] || { echo "no $TEST (set RNMT_CORPORA)" >&2; exit 1; }

cargo build --release --quiet
BIN=target/release/rnmt
WORK="$(mktemp -d)"
declare -A PID PORT
cleanup() {
    for pid in "${PID[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
head -n "$SENTENCES" "$TEST" > "$WORK/input.de"

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
echo "SIMD: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(sse4_2|avx|avx2|fma|avx512f|avx512bw|avx512vl|avx512_vnni|amx_tile)$' | tr '\n' ' ')"
echo "sentences: $(wc -l < "$WORK/input.de") from $TEST; $DURATION s per level; server --threads $THREADS; batched server flags: ${BATCHED_FLAGS:-none}; client: $CLIENT"

# Offline `rnmt translate` of the same sentences (model loading included: about 0.06 s),
# in sentences/s; run again before every row, so that it shares the row's machine load.
offline() {
    local start end
    start=$(date +%s.%N)
    "$BIN" translate --threads "$THREADS" -i "$WORK/input.de" -o "$WORK/offline.en" 2>/dev/null
    end=$(date +%s.%N)
    python3 -c "print(f'{$(wc -l < "$WORK/input.de") / ($end - $start):.1f}')"
}

# The Python client: CONCURRENCY threads, each posting one sentence at a time for DURATION s.
cat > "$WORK/client.py" <<'EOF'
import http.client, json, sys, threading, time
host, port, concurrency, duration, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
sentences = [l.rstrip("\n") for l in open(path, encoding="utf-8") if l.strip()]
latencies, errors, lock = [], [0], threading.Lock()
deadline = time.monotonic() + duration
def run(k):
    conn = http.client.HTTPConnection(host, port, timeout=120)
    i = k * 7919
    while time.monotonic() < deadline:
        body = json.dumps({"q": sentences[i % len(sentences)], "source": "de", "target": "en"})
        i += 1
        t = time.monotonic()
        try:
            conn.request("POST", "/translate", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            ok = r.status == 200 and "translatedText" in json.loads(data)
        except Exception:
            ok = False
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=120)
        dt = time.monotonic() - t
        with lock:
            if ok:
                latencies.append(dt)
            else:
                errors[0] += 1
threads = [threading.Thread(target=run, args=(k,)) for k in range(concurrency)]
start = time.monotonic()
for t in threads: t.start()
for t in threads: t.join()
elapsed = time.monotonic() - start
latencies.sort()
q = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else float("nan")
print(f"{len(latencies) / elapsed:.1f} {q(0.50):.0f} {q(0.99):.0f} {errors[0]}")
EOF

# Starts server NAME with extra flags; sets PID[NAME] and PORT[NAME].
start_server() {
    local name=$1
    shift
    "$BIN" serve --port 0 --threads "$THREADS" --model models/tatoeba-de-en "$@" 2> "$WORK/$name.log" &
    PID[$name]=$!
    for _ in $(seq 1 600); do
        PORT[$name]=$(sed -n 's#^listening on http://127.0.0.1:##p' "$WORK/$name.log")
        if [ -n "${PORT[$name]}" ] && curl -sf --max-time 5 "http://127.0.0.1:${PORT[$name]}/health" >/dev/null; then
            return
        fi
        sleep 0.1
    done
    echo "the $name server did not start:" >&2
    cat "$WORK/$name.log" >&2
    exit 1
}

peak_rss_mb() {
    awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/${PID[$1]}/status"
}

load() {
    local figures
    case "$CLIENT" in
        wrk) figures=$(wrk -t1 -c "$2" -d "${DURATION}s" --timeout 120s -s benches/serve_client.lua \
            "http://127.0.0.1:${PORT[$1]}" "$WORK/input.de" | sed -n 's/^RESULT //p') ;;
        python) figures=$(python3 "$WORK/client.py" 127.0.0.1 "${PORT[$1]}" "$2" "$DURATION" "$WORK/input.de") ;;
    esac
    echo "$figures $(peak_rss_mb "$1")"
}

# shellcheck disable=SC2086 # BATCHED_FLAGS is a list of flags
start_server batched ${BATCHED_FLAGS:-}
start_server single --max-batch-tokens 1 --batch-workers 1

printf '\n| clients | batched sent/s | p50 ms | p99 ms | errors | RSS MB | one-at-a-time sent/s | p50 ms | p99 ms | errors | RSS MB | offline sent/s | batched / one-at-a-time | batched / offline |\n'
printf '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n'
for c in $CLIENTS; do
    for _ in $(seq 1 "$REPEAT"); do
        off_rate=$(offline)
        read -r bt bp50 bp99 berr brss <<< "$(load batched "$c")"
        read -r st sp50 sp99 serr srss <<< "$(load single "$c")"
        ratio=$(python3 -c "print(f'{$bt / $st:.2f}×' if $st > 0 else '-')")
        off=$(python3 -c "print(f'{$bt / $off_rate:.2f}×')")
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
            "$c" "$bt" "$bp50" "$bp99" "$berr" "$brss" "$st" "$sp50" "$sp99" "$serr" "$srss" "$off_rate" "$ratio" "$off"
    done
done
