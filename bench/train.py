"""RRTF training steps: the layout the trainer picks against the naive padded batch, over a grid, same run.

    .venv/bin/python bench/train.py                      # the grid below, ~10 min on 1 CPU thread
    .venv/bin/python bench/train.py --k 4 --prompt-len 256 --resp-len 256 --ckpt off,on   # one point
    .venv/bin/python bench/train.py --device cuda --dtype bf16 --attn flash_attention_2 --layers 4 --embd 1024
    .venv/bin/python bench/train.py --dropout-study      # shared vs independent prompt dropout (README)
    .venv/bin/python bench/train.py --head-study         # chunked logits head vs the model's logits, peak memory

Grid: k in {4, 8} responses per prompt, prompt length in {256, 1024}, response length in {256, 512},
activation checkpointing off/on (non-reentrant, as transformers enables it). Per cell, a random-init
GPTBigCode (StarCoder's architecture: multi-query attention; --layers 4, --embd 128, --vocab 256 by
default: small so the grid fits on a shared CPU, and with the vocabulary projection a small share of
the per-token compute as in StarCoder, 49152 / (12 x 6144 x 40 layers) = 1.7%, here 256 / (12 x 128 x 4)
= 4%; at vocab 2048 it would be 67% and hide the layout's effect) takes full steps (forward, backward, AdamW) on a seeded
batch of --prompts prompts with lengths in [0.75, 1] x prompt length and k responses with lengths in
[0.5, 1] x response length (real responses differ in length; the naive layout pads them).

Per cell, `align.train.layout_choice.decide` picks the layout exactly as RankTrainer does ("auto": static
rules, then a probe) and that layout runs against "naive" (k right-padded rows per prompt, the prompt
repeated: the public RRHF code's layout), both with the same chunked logits head and the same init:
- tokens/s: data tokens per step (each prompt once + all responses, the same for both) over the fastest
  of --steps timed steps after a warm-up step; the two take their steps alternately, so they share the
  machine's load. On CPU the step time is this process's CPU time (time.process_time, one thread):
  on a machine shared by many jobs, wall time mostly measures the wait for a core;
- peak memory of a step: on CPU, the growth of this process's peak RSS during the step (VmHWM reset
  through /proc/self/clear_refs before it; glibc's mmap threshold pinned at 1 MB so freed tensors leave
  RSS): activations, gradients and temporaries; optimizer state exists from the warm-up step on and is
  not counted. On CUDA, torch.cuda.max_memory_allocated over the step, minus what was allocated before.
Printed: a table, then one JSON line (per cell: layout, speedup = tokens/s ratio, mem_ratio = peak ratio).
"""
from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def make_batch(a, k: int, P: int, R: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    B = a.prompts
    plens = torch.randint(int(0.75 * P), P + 1, (B,), generator=g)
    rlens = torch.randint(int(0.5 * R), R + 1, (B, k), generator=g)
    scores = torch.randint(0, 4, (B, k), generator=g).float()
    teacher = torch.zeros(B, k, dtype=torch.bool)
    teacher[:, 0] = True
    scores[:, 0] = 3.0                                   # the teacher passes: RRTF pairs exist
    batch = {"prompt_ids": torch.randint(1, a.vocab, (B, P), generator=g), "prompt_lens": plens,
             "response_ids": torch.randint(1, a.vocab, (B, k, R), generator=g), "response_lens": rlens,
             "scores": scores, "teacher": teacher}
    return {key: v.to(a.device) for key, v in batch.items()}


def build(a, positions: int, ckpt: bool, dropout: float = 0.0, lr: float = 1e-4):
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    torch.manual_seed(0)
    cfg = GPTBigCodeConfig(n_layer=a.layers, n_embd=a.embd, n_head=a.heads, multi_query=True, vocab_size=a.vocab,
                           n_positions=positions, bos_token_id=0, eos_token_id=0, resid_pdrop=dropout,
                           embd_pdrop=dropout, attn_pdrop=dropout)
    cfg._attn_implementation = a.attn
    model = GPTBigCodeForCausalLM(cfg).to(device=a.device, dtype=DTYPES[a.dtype]).train()
    if ckpt:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model, torch.optim.AdamW(model.parameters(), lr=lr)


def make_step(model, opt, batch, layout: str, head: str, loss: str = "rrtf"):
    from align.train.losses import LOSSES, RankLossConfig
    from align.train.packing import response_logps

    cfg = RankLossConfig(loss=loss)

    def step() -> float:
        b = step.batch
        opt.zero_grad(set_to_none=True)
        logp_sum, lengths = response_logps(model, b, layout, head=head)
        out = LOSSES[loss](logp_sum, lengths, b["scores"], b["teacher"], cfg)
        out["loss"].backward()
        opt.step()
        return float(out["loss"].detach())
    step.batch = batch
    return step


class Meter:
    """Wall time and peak memory growth of one call (see the module docstring)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        if not self.cuda:
            ctypes.CDLL("libc.so.6").mallopt(-3, 2**20)   # M_MMAP_THRESHOLD: large frees leave RSS

    @staticmethod
    def _status(key: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"{key} not in /proc/self/status")

    def __call__(self, fn) -> tuple[float, float]:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() / 2**20
        else:
            Path("/proc/self/clear_refs").write_text("5")    # VmHWM := current RSS
            base = self._status("VmRSS:")
        # CPU: this process's CPU time (one thread), which the other tenants of a loaded machine do not
        # inflate as they do wall time; CUDA: wall time after a synchronize.
        clock = time.perf_counter if self.cuda else time.process_time
        t0 = clock()
        fn()
        if self.cuda:
            torch.cuda.synchronize()
        seconds = clock() - t0
        peak = torch.cuda.max_memory_allocated() / 2**20 if self.cuda else self._status("VmHWM:")
        return seconds, peak - base


def run_cell(a, meter: Meter, k: int, P: int, R: int, ckpt: bool) -> dict:
    from align.train.layout_choice import decide

    batch = make_batch(a, k, P, R)
    auto_model, auto_opt = build(a, P + R + 8, ckpt)
    decision = decide(auto_model, "auto")                # what RankTrainer would run
    steps = {"naive": make_step(*build(a, P + R + 8, ckpt), batch, "naive", decision.head)}
    if decision.layout != "naive":
        steps[decision.layout] = make_step(auto_model, auto_opt, batch, decision.layout, decision.head)
    first = {lay: step() for lay, step in steps.items()}    # warm-up: optimizer state, lazy inits
    n_steps = max(1, a.steps if k * (P + R) <= 4 * 512 else a.steps - 1)   # fewer for large cells
    seconds = {lay: [] for lay in steps}
    peaks = {lay: [] for lay in steps}
    for _ in range(n_steps):
        for lay, step in steps.items():
            s, m = meter(step)
            seconds[lay].append(s)
            peaks[lay].append(m)
    tokens = int(batch["prompt_lens"].sum() + batch["response_lens"].sum())
    naive, chosen = "naive", decision.layout
    tps = {lay: tokens / min(s) for lay, s in seconds.items()}
    peak = {lay: max(p) for lay, p in peaks.items()}
    return {"k": k, "prompt_len": P, "resp_len": R, "ckpt": ckpt, "layout": chosen, "head": decision.head,
            "tokens_per_step": tokens, "steps": n_steps,
            "naive_tok_s": round(tps[naive], 1), "tok_s": round(tps[chosen], 1),
            "naive_peak_mb": round(peak[naive], 1), "peak_mb": round(peak[chosen], 1),
            "speedup": round(tps[chosen] / tps[naive], 2),
            "mem_ratio": round(peak[chosen] / max(peak[naive], 1e-9), 2),
            "loss_diff": abs(first[chosen] - first[naive])}


def dropout_study(a) -> dict:
    """Train the same init with dropout 0.1 under prefix (one prompt dropout draw shared by the k
    responses) and naive (k independent draws) on the same learnable batches, --dropout-seeds dropout
    seeds each; report the dropout-free RRTF loss on held-out batches (mean, stdev over seeds)."""
    from align.train.losses import LOSSES, RankLossConfig
    from align.train.packing import response_logps

    cfg = RankLossConfig(loss="rrtf")
    k, P, R = 4, 64, 32

    def batches(seed, n):
        # Learnable, and only through the prompt: a response scoring >= 2 repeats the prompt's first token.
        out = []
        for i in range(n):
            b = make_batch(a, k, P, R, seed=seed * 1000 + i)
            for j in range(a.prompts):
                good = b["prompt_ids"][j, 0].repeat(R)
                for r in range(k):
                    if b["scores"][j, r] >= 2:
                        b["response_ids"][j, r] = good
                        b["response_lens"][j, r] = R
            out.append(b)
        return out

    def loss_of(model, batch_list):
        model.eval()
        with torch.no_grad():
            vals = [float(LOSSES["rrtf"](*response_logps(model, b, "naive", head="chunks"), b["scores"],
                                         b["teacher"], cfg)["loss"]) for b in batch_list]
        model.train()
        return sum(vals) / len(vals)

    train, held_out = batches(1, a.dropout_steps), batches(2, 4)
    runs: dict[str, list[float]] = {"prefix": [], "naive": []}
    for seed in range(a.dropout_seeds):
        for layout in runs:
            model, opt = build(a, P + R + 8, False, dropout=0.1, lr=2e-3)
            torch.manual_seed(seed)                   # the dropout draws
            step = make_step(model, opt, None, layout, "chunks")
            for b in train:
                step.batch = b
                step()
            runs[layout].append(loss_of(model, held_out))
    init_model, _ = build(a, P + R + 8, False)
    stats = {lay: {"mean": round(statistics.mean(v), 4), "stdev": round(statistics.stdev(v), 4) if len(v) > 1 else None,
                   "runs": [round(x, 4) for x in v]} for lay, v in runs.items()}
    return {"setup": {"k": k, "prompt_len": P, "resp_len": R, "dropout": 0.1, "steps": a.dropout_steps,
                      "seeds": a.dropout_seeds}, "init_held_out_loss": round(loss_of(init_model, held_out), 4),
            "held_out_loss": stats,
            "prefix_minus_naive": round(stats["prefix"]["mean"] - stats["naive"]["mean"], 4)}


def head_study(a, meter: Meter) -> dict:
    """Peak memory of one RRTF step at StarCoder's vocabulary (49152): the chunked head against the
    model's own logits head ([tokens, vocab] kept for backward), same model, batch and layout."""
    a.vocab = 49152
    k, P, R = 4, 256, 512
    batch = make_batch(a, k, P, R)
    model, opt = build(a, P + R + 8, False)
    out = {}
    for head in ("logits", "chunks"):
        step = make_step(model, opt, batch, "prefix", head)
        step()                                         # warm-up
        seconds, peak = meter(step)
        out[head] = {"peak_mb": round(peak, 1), "step_s": round(seconds, 3)}
    targets = int(batch["response_lens"].sum())
    return {"setup": {"k": k, "prompt_len": P, "resp_len": R, "vocab": a.vocab, "target_tokens": targets,
                      "fp32_logits_mb": round(targets * a.vocab * 4 / 2**20, 1)},
            **out, "mem_ratio": round(out["chunks"]["peak_mb"] / out["logits"]["peak_mb"], 3)}


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=ints, default=[4, 8])
    p.add_argument("--prompt-len", type=ints, default=[256, 1024])
    p.add_argument("--resp-len", type=ints, default=[256, 512])
    p.add_argument("--ckpt", default="off,on", help="activation checkpointing: off, on or off,on")
    p.add_argument("--prompts", type=int, default=1)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--embd", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="timed steps per layout (one fewer for large cells)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--attn", default="sdpa", help="attn_implementation: sdpa, eager, flash_attention_2, ...")
    p.add_argument("--dropout-study", action="store_true")
    p.add_argument("--head-study", action="store_true", help="chunked logits head vs the model's logits")
    p.add_argument("--dropout-steps", type=int, default=120)
    p.add_argument("--dropout-seeds", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    ckpts = {"off": [False], "on": [True], "off,on": [False, True], "on,off": [True, False]}[a.ckpt]
    if a.dropout_study:
        print(json.dumps({"bench": "train_dropout", **dropout_study(a)}))
        return
    meter, cells = Meter(a.device), []
    if a.head_study:
        print(json.dumps({"bench": "train_head", **head_study(a, meter)}))
        return
    print(f"{'k':>2} {'prompt':>6} {'resp':>5} {'ckpt':>4}  {'layout':7} {'naive tok/s':>11} {'tok/s':>8} "
          f"{'speedup':>7}  {'naive MB':>8} {'MB':>7} {'mem':>5}", flush=True)
    for k, P, R, ckpt in itertools.product(a.k, a.prompt_len, a.resp_len, ckpts):
        c = run_cell(a, meter, k, P, R, ckpt)
        cells.append(c)
        print(f"{k:>2} {P:>6} {R:>5} {'on' if ckpt else 'off':>4}  {c['layout']:7} {c['naive_tok_s']:>11.1f} "
              f"{c['tok_s']:>8.1f} {c['speedup']:>6.2f}x  {c['naive_peak_mb']:>8.1f} {c['peak_mb']:>7.1f} "
              f"{c['mem_ratio']:>5.2f}", flush=True)
    setup = {key: getattr(a, key) for key in ("prompts", "layers", "embd", "heads", "vocab", "steps", "threads",
                                              "device", "dtype", "attn")}
    setup["loadavg"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(json.dumps({"bench": "train", "setup": setup, "cells": cells}))


if __name__ == "__main__":
    main()
