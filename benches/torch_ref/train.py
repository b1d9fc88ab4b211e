"""Trains the PyTorch reference on batches written by examples/dump_batches.rs.

    python benches/torch_ref/train.py --model INIT_DIR --batches batches.jsonl \
        --steps 40 --warmup 5 --threads 2
    python benches/torch_ref/train.py --model INIT_DIR --batches batches.jsonl --check

Training mirrors one step of src/train/trainer.rs: forward with dropout, label-smoothed
loss / tokens, backward, global gradient norm, clipping, Adam (AdamW when weight decay
> 0), plus the NLL of the same logits that rnmt logs. Learning rates (rnmt's schedule,
step by step), clipping, label smoothing and Adam's parameters come from
INIT_DIR/train.json, written by dump_batches. Prints one JSON line per step and then
`final loss L` and `tokens/s X` over the steps after the warm-up (tokens / step time, as rnmt's
metrics.jsonl).

--check runs the steps recorded in INIT_DIR/reference.json with dropout off and compares
loss, NLL and gradient norm with rnmt's; exit status 1 if any differs by more than
--tolerance (relative).
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import label_smoothed_loss, load_model  # noqa: E402


def read_batches(path):
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            try:
                b = json.loads(line)
                out.append(tuple(
                    torch.tensor(b[k], dtype=torch.long)
                    for k in ("src", "src_lengths", "tgt_in", "tgt_out", "tgt_lengths")
                ))
            except (ValueError, KeyError) as e:
                sys.exit(f"{path}:{n}: not a batch line of dump_batches ({e})")
    if not out:
        sys.exit(f"{path}: no batches")
    return out


def train_step(model, opt, params, batch, smoothing, clip_norm):
    src, src_len, tgt_in, tgt_out, tgt_len = batch
    logits = model(src, src_len, tgt_in, tgt_len)
    total, tokens = label_smoothed_loss(logits, tgt_out, tgt_len, smoothing)
    objective = total / max(tokens, 1)
    opt.zero_grad(set_to_none=True)
    objective.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, clip_norm if clip_norm > 0 else float("inf"))
    opt.step()
    with torch.no_grad():
        nll = label_smoothed_loss(logits.detach(), tgt_out, tgt_len, 0.0)[0] / max(tokens, 1)
    return objective.item(), nll.item(), norm.item(), tokens


def make_optimizer(params, lr, adam):
    kw = dict(lr=lr, betas=(adam["beta1"], adam["beta2"]), eps=adam["eps"])
    if adam["weight_decay"] > 0:
        return torch.optim.AdamW(params, weight_decay=adam["weight_decay"], **kw)
    return torch.optim.Adam(params, **kw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="rnmt model folder (config.json, model.safetensors)")
    ap.add_argument("--batches", required=True)
    ap.add_argument("--steps", type=int, default=0, help="default: every batch once")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--tolerance", type=float, default=1e-3)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    model = load_model(args.model)
    batches = read_batches(args.batches)
    params = [p for p in model.parameters() if p.requires_grad]

    if args.check:
        with open(os.path.join(args.model, "reference.json")) as f:
            ref = json.load(f)
        model.eval()  # dropout off, as the reference steps
        opt = make_optimizer(params, ref["lr"], ref["adam"])
        worst = 0.0
        for rec in ref["steps"]:
            batch = batches[rec["step"] % len(batches)]
            loss, nll, norm, tokens = train_step(model, opt, params, batch, ref["label_smoothing"], ref["clip_norm"])
            diffs = {k: abs(a - rec[k]) / max(abs(rec[k]), 1e-12)
                     for k, a in (("loss", loss), ("nll", nll), ("grad_norm", norm))}
            worst = max(worst, *diffs.values())
            print(json.dumps(dict(step=rec["step"], tokens=tokens, torch=dict(loss=loss, nll=nll, grad_norm=norm),
                                  rnmt=dict(loss=rec["loss"], nll=rec["nll"], grad_norm=rec["grad_norm"]),
                                  rel_diff=diffs)))
        verdict = "agree" if worst <= args.tolerance else "DIFFER"
        print(f"check: rnmt and pytorch {verdict} (largest relative difference {worst:.2e}, tolerance {args.tolerance:g})")
        sys.exit(0 if worst <= args.tolerance else 1)

    with open(os.path.join(args.model, "train.json")) as f:
        hp = json.load(f)
    model.train()
    lrs = hp["lr"]
    opt = make_optimizer(params, lrs[0], hp["adam"])
    steps = args.steps or len(batches)
    tokens_total, seconds_total = 0, 0.0
    for step in range(steps):
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lrs[min(step, len(lrs) - 1)]
        loss, nll, norm, tokens = train_step(model, opt, params, batches[step % len(batches)],
                                             hp["label_smoothing"], hp["clip_norm"])
        dt = time.perf_counter() - t0
        print(json.dumps(dict(step=step + 1, loss=loss, nll=nll, grad_norm=norm, target_tokens=tokens,
                              tokens_per_s=tokens / dt)), flush=True)
        if step >= args.warmup:
            tokens_total += tokens
            seconds_total += dt
    if seconds_total == 0:
        sys.exit(f"no steps after the {args.warmup} warm-up steps")
    print(f"final loss {loss:.4f}")
    print(f"tokens/s {tokens_total / seconds_total:.1f}")


if __name__ == "__main__":
    main()
