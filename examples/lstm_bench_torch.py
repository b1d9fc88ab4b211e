"""PyTorch baseline for examples/lstm_bench.rs: one nn.LSTM layer, forward + backward, same
shapes and the same two figures (best wall ms, mean process CPU ms per iteration).

    python examples/lstm_bench_torch.py --hidden 256 --threads 1
"""
import argparse
import time

import torch


def timed(iters, f):
    f()
    f()
    cpu0 = time.process_time()
    best = float("inf")
    for _ in range(iters):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3, (time.process_time() - cpu0) * 1e3 / iters


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--time", type=int, default=14)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    b, t, h = a.batch, a.time, a.hidden
    lstm = torch.nn.LSTM(h, h, batch_first=True)
    xs = torch.randn(b, t, h, requires_grad=True)
    w = torch.randn(b, t, h)

    def step():
        out, _ = lstm(xs)
        (out * w).sum().backward()

    def fwd():
        with torch.no_grad():
            lstm(xs)

    flops = 3 * 2 * b * t * 4 * h * (2 * h)
    wall, cpu = timed(a.iters, step)
    print(f"torch {torch.__version__} LSTM B={b} T={t} I=H={h} threads={a.threads}")
    print(f"torch fwd+bwd {wall:7.2f} ms/iter best wall ({flops / wall / 1e6:5.1f} GFLOP/s), {cpu:7.2f} ms CPU/iter")
    wall, cpu = timed(a.iters, fwd)
    print(f"torch fwd only (no grad) {wall:7.2f} ms/iter best wall, {cpu:7.2f} ms CPU/iter")


if __name__ == "__main__":
    main()
