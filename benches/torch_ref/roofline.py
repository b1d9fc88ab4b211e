"""Roofline numbers for rnmt training: matmul FLOPs per target token of a model on real
batches, and the fraction of this machine's measured sgemm peak that a throughput reaches.

    python3 benches/torch_ref/roofline.py --batches batches.jsonl --config MODEL/config.json \
        [--gemm-gflops 1=95.0,2=180.0 | --lstm-bench target/release/examples/lstm_bench] \
        [--tokens-per-s 1=1800,2=3000]

FLOPs are counted from the padded batch shapes (what the kernels compute), 2 per
multiply-add, training = 3 x forward (forward, input gradients, weight gradients).
Counted: LSTM/GRU input and recurrent projections, attention projections, scores and
contexts, the combine layer and the output projection. Not counted: element-wise work
(gates, tanh of additive attention counted separately as `elementwise`), softmax, loss,
Adam. Needs only the Python standard library.

The sgemm peak comes from examples/lstm_bench.rs (`gemm 1024^3 on N thread(s): X GFLOP/s`,
the gemm crate that candle uses), run once per thread count with RAYON_NUM_THREADS=N.
"""

import argparse
import json
import os
import re
import subprocess
import sys


def forward_flops(cfg, b, s, t):
    """(matmul FLOPs, element-wise attention FLOPs) of one forward pass over a
    [b x s] source and [b x t] target batch."""
    e, h, v = cfg["embedding_size"], cfg["hidden_size"], cfg["tgt_vocab_size"]
    mm = 0

    gates = 3 if cfg.get("cell") == "gru" else 4  # GRU: r, z, n; LSTM: i, f, g, o

    def lstm(rows, inp, hid):
        return 2 * rows * inp * gates * hid + 2 * rows * hid * gates * hid

    for l in range(cfg["encoder_layers"]):
        inp = e if l == 0 else h
        if l == 0 or cfg["bidirectional"] == "all":
            mm += 2 * lstm(b * s, inp, h // 2)
        else:
            mm += lstm(b * s, inp, h)
    att = cfg["attention"]
    if att != "dot":
        mm += 2 * b * s * h * h  # keys
    if att == "multi_head_additive":
        mm += 2 * b * s * h * h  # values
    for l in range(cfg["decoder_layers"]):
        if cfg["input_feeding"]:
            inp = e + h if l == 0 else h
        else:
            inp = e if l == 0 else 2 * h
        mm += lstm(b * t, inp, h)
    if cfg.get("cgru"):
        mm += lstm(b * t, h, h)  # the conditional GRU's second cell
    elementwise = 0
    if att in ("dot", "general"):
        mm += 2 * b * t * s * h  # scores
    else:
        mm += 2 * b * t * h * h  # query projection
        elementwise += 4 * b * t * s * h  # add, tanh, multiply by v, sum
    mm += 2 * b * t * s * h  # contexts
    mm += 2 * b * t * 2 * h * h  # combine
    mm += 2 * b * t * h * v  # output projection
    return mm, elementwise


def parse_pairs(text):
    out = {}
    for item in text.split(","):
        k, val = item.split("=")
        out[int(k)] = float(val)
    return out


def gemm_peak(lstm_bench, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), CANDLE_NUM_THREADS=str(threads))
    out = subprocess.run([lstm_bench, "--iters", "3"], env=env, check=True,
                         capture_output=True, text=True).stdout
    m = re.search(r"gemm 1024\^3 on \d+ thread\(s\):\s*([\d.]+) GFLOP/s", out)
    if not m:
        sys.exit(f"{lstm_bench}: no `gemm 1024^3` line in its output")
    return float(m.group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", required=True, help="dump_batches output (JSON lines)")
    ap.add_argument("--config", required=True, help="the model's config.json")
    ap.add_argument("--gemm-gflops", help="measured sgemm peaks, e.g. 1=95,2=180")
    ap.add_argument("--lstm-bench", help="path of the lstm_bench example, to measure the peaks")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--tokens-per-s", help="training throughputs per thread count, e.g. 1=1800,2=3000")
    args = ap.parse_args()

    with open(args.config) as f:
        cfg = json.load(f)
    mm = ew = tokens = 0
    with open(args.batches) as f:
        for n, line in enumerate(f, 1):
            bt = json.loads(line)
            b, s, t = len(bt["src"]), len(bt["src"][0]), len(bt["tgt_in"][0])
            m, e = forward_flops(cfg, b, s, t)
            mm += m
            ew += e
            tokens += bt["target_tokens"]
    if tokens == 0:
        sys.exit(f"{args.batches}: no batches")
    per_token = 3 * mm / tokens
    print(f"model emb {cfg['embedding_size']} hidden {cfg['hidden_size']} vocab {cfg['tgt_vocab_size']}, "
          f"attention {cfg['attention']}, {n} batches, {tokens} target tokens")
    print(f"training matmul FLOPs per target token: {per_token / 1e6:.1f} MFLOP "
          f"(+ {3 * ew / tokens / 1e6:.1f} MFLOP element-wise attention)")
    peaks = parse_pairs(args.gemm_gflops) if args.gemm_gflops else {}
    if args.lstm_bench:
        for th in (int(x) for x in args.threads.split(",")):
            peaks[th] = gemm_peak(args.lstm_bench, th)
    rates = parse_pairs(args.tokens_per_s) if args.tokens_per_s else {}
    for th in sorted(peaks):
        line = f"{th} thread(s): sgemm peak {peaks[th]:.1f} GFLOP/s = {peaks[th] * 1e9 / per_token:.0f} tok/s at the roofline"
        if th in rates:
            achieved = rates[th] * per_token / 1e9
            line += f"; {rates[th]:.0f} tok/s = {achieved:.1f} GFLOP/s = {100 * achieved / peaks[th]:.0f}% of peak"
        print(line)


if __name__ == "__main__":
    main()
