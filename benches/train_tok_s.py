"""Target tokens per second of a training run, from its metrics.jsonl.

    python3 benches/train_tok_s.py RUN/metrics.jsonl WARMUP [DIGITS]

Prints "TOK_S LOSS": target tokens / step time over the steps after WARMUP, and the
loss of the last step (with DIGITS decimals, default 4).
"""

import json
import sys

tokens = seconds = 0.0
loss = float("nan")
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("kind") == "train":
        loss = r["loss"]
        if r["step"] > int(sys.argv[2]):
            tokens += r["target_tokens"]
            seconds += r["target_tokens"] / r["tokens_per_s"]
digits = int(sys.argv[3]) if len(sys.argv) > 3 else 4
print(f"{tokens / seconds:.1f} {loss:.{digits}f}")
