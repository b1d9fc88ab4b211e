"""Decodes source ids (from examples/dump_batches.rs --encoded-out) with the PyTorch
reference: greedy for --beam 1, GNMT beam search otherwise, batched like `rnmt translate`
(chunks of 8 x batch-size lines, sorted by length inside a chunk, batches of batch-size).

    python benches/torch_ref/decode.py --model MODEL_DIR --input ids.jsonl --beam 5 \
        --threads 2 [--batch-size 32 --alpha 0.6 --beta 0.2 --output hyp_ids.jsonl]

Prints `sent/s X` (decoding only, model loading excluded) as its last line.
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import beam_search, greedy, load_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--alpha", type=float, help="default: the model's decode_alpha")
    ap.add_argument("--beta", type=float, help="default: the model's decode_beta")
    ap.add_argument("--output")
    args = ap.parse_args()
    if args.beam < 1:
        sys.exit("--beam must be at least 1")

    torch.set_num_threads(args.threads)
    model = load_model(args.model).eval()
    alpha = model.cfg.decode_alpha if args.alpha is None else args.alpha
    beta = model.cfg.decode_beta if args.beta is None else args.beta
    with open(args.input) as f:
        sources = []
        for n, line in enumerate(f, 1):
            try:
                sources.append([int(i) for i in json.loads(line)])
            except (ValueError, TypeError) as e:
                sys.exit(f"{args.input}:{n}: not a JSON array of ids ({e})")
    hyps = [None] * len(sources)
    t0 = time.perf_counter()
    chunk = 8 * args.batch_size
    for start in range(0, len(sources), chunk):
        order = sorted(range(start, min(start + chunk, len(sources))), key=lambda i: len(sources[i]))
        for b in range(0, len(order), args.batch_size):
            idx = order[b : b + args.batch_size]
            batch = [sources[i] for i in idx]
            out = greedy(model, batch) if args.beam == 1 else beam_search(model, batch, args.beam, alpha, beta)
            for i, h in zip(idx, out):
                hyps[i] = h
    dt = time.perf_counter() - t0
    if args.output:
        with open(args.output, "w") as f:
            for h in hyps:
                f.write(json.dumps(h) + "\n")
    print(f"sent/s {len(sources) / dt:.1f}")


if __name__ == "__main__":
    main()
