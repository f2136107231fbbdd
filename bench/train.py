"""One RRTF and one RRHF training step: prompt-sharing layouts against the naive padded batch, same run.

    .venv/bin/python bench/train.py [--prompts 2] [--k 4] [--prompt-len 256] [--resp-len 256] [--steps 3]

A random-init GPTBigCode (StarCoder's architecture; 4 layers, n_embd 256, multi-query, vocab 2048 as
a locally trained code tokenizer would have) takes full steps (forward, backward, AdamW step) on the same
seeded batch: `--prompts` prompts, k responses each, prompt lengths in [0.75, 1] x --prompt-len and
response lengths in [0.5, 1] x --resp-len (real responses differ in length; the naive layout pads them).

Layouts (align/train/packing.py): "naive" = k right-padded rows per prompt with the prompt repeated
(the public RRHF code's layout; it here also projects only response positions onto the vocabulary,
so the comparison isolates the layout); "prefix" = prompt once, KV cache expanded to the k responses;
"packed" = one row per prompt with a 4D block mask.

Measured with one thread (torch.set_num_threads(1); --threads to change):
- tokens/s: data tokens per step (each prompt once + all responses, the same count for every layout)
  divided by the fastest of --steps steps after a warm-up step; the layouts take their steps
  round-robin in one process (a model + optimizer each, same init) so they share the machine's load;
- peak memory, in a fresh subprocess per (loss, layout): growth of the peak RSS (VmHWM from
  /proc/self/status; resource.getrusage ru_maxrss elsewhere) over a warm-up step and one more step: activations, gradients, optimizer state and allocator slack; the model and data are
  built before the baseline. (tracemalloc does not see torch's allocations.)
The last line is JSON: per (loss, layout) figures, and per loss the ratios against naive
(speedup = tokens/s ratio, mem_ratio = peak growth ratio; < 1 is less memory).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_batch(a, torch):
    g = torch.Generator().manual_seed(0)
    B, K, P, R = a.prompts, a.k, a.prompt_len, a.resp_len
    plens = torch.randint(int(0.75 * P), P + 1, (B,), generator=g)
    rlens = torch.randint(int(0.5 * R), R + 1, (B, K), generator=g)
    scores = torch.randint(0, 4, (B, K), generator=g).float()
    teacher = torch.zeros(B, K, dtype=torch.bool)
    teacher[:, 0] = True
    scores[:, 0] = 3.0                                   # the teacher passes: RRTF pairs exist
    return {"prompt_ids": torch.randint(1, a.vocab, (B, P), generator=g), "prompt_lens": plens,
            "response_ids": torch.randint(1, a.vocab, (B, K, R), generator=g), "response_lens": rlens,
            "scores": scores, "teacher": teacher}


def build(a, torch):
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    torch.manual_seed(0)
    cfg = GPTBigCodeConfig(n_layer=a.layers, n_embd=a.embd, n_head=a.heads, multi_query=True, vocab_size=a.vocab,
                           n_positions=a.prompt_len + a.resp_len + 8, bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPTBigCodeForCausalLM(cfg).train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def make_step(model, opt, batch, loss: str, layout: str):
    from align.train.losses import LOSSES, RankLossConfig
    from align.train.packing import response_logps

    cfg = RankLossConfig(loss=loss)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        logp_sum, lengths = response_logps(model, batch, layout)
        out = LOSSES[loss](logp_sum, lengths, batch["scores"], batch["teacher"], cfg)
        out["loss"].backward()
        opt.step()
        return float(out["loss"].detach())
    return step


def time_layouts(a, loss: str, layouts: list[str]) -> dict[str, dict]:
    """Round-robin over the layouts (one model + optimizer each, same init), so all see the same load."""
    import torch

    torch.set_num_threads(a.threads)
    batch = make_batch(a, torch)
    steps = {lay: make_step(*build(a, torch), batch, loss, lay) for lay in layouts}
    first = {lay: steps[lay]() for lay in layouts}               # warm-up; the losses must agree
    times: dict[str, list[float]] = {lay: [] for lay in layouts}
    for _ in range(a.steps):
        for lay in layouts:
            t0 = time.perf_counter()
            steps[lay]()
            times[lay].append(time.perf_counter() - t0)
    tokens = int(batch["prompt_lens"].sum() + batch["response_lens"].sum())
    return {lay: {"step_s_min": round(min(t), 4), "step_s_median": round(statistics.median(t), 4),
                  "tokens_per_step": tokens, "tokens_per_s": round(tokens / min(t), 1),
                  "first_loss": round(first[lay], 5)} for lay, t in times.items()}


def peak_rss_kb() -> int:
    """Peak RSS of this process. VmHWM belongs to this address space; ru_maxrss would also carry the
    parent's peak across fork+exec on Linux, hiding a child's smaller peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_memory(a) -> dict:
    """In a fresh process: growth of peak RSS over a warm-up step and one more step of one variant."""
    import torch

    torch.set_num_threads(a.threads)
    batch = make_batch(a, torch)
    model, opt = build(a, torch)
    step = make_step(model, opt, batch, a.loss, a.layout)
    base_kb = peak_rss_kb()
    step()
    step()
    peak_kb = peak_rss_kb()
    return {"peak_rss_growth_mb": round((peak_kb - base_kb) / 1024, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--resp-len", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--embd", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--layouts", default="naive,prefix,packed")
    p.add_argument("--losses", default="rrtf,rrhf")
    p.add_argument("--loss", help=argparse.SUPPRESS)     # internal: run one variant in this process
    p.add_argument("--layout", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.loss:
        print(json.dumps(peak_memory(a)))
        return
    layouts, results, ratios = a.layouts.split(","), [], {}
    memory = {}
    for loss in a.losses.split(","):                     # before this process grows (see peak_rss_kb)
        for layout in layouts:
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--loss", loss, "--layout", layout],
                                 capture_output=True, text=True, check=True)
            memory[loss, layout] = json.loads(out.stdout.strip().splitlines()[-1])
    for loss in a.losses.split(","):
        timed = time_layouts(a, loss, layouts)
        for layout in layouts:
            r = {"loss": loss, "layout": layout, **timed[layout], **memory[loss, layout]}
            results.append(r)
            print(f"{loss:5s} {layout:7s} {r['step_s_min']:7.3f} s/step (median {r['step_s_median']:.3f}) "
                  f"{r['tokens_per_s']:8.1f} tok/s  peak RSS +{r['peak_rss_growth_mb']:6.1f} MB  "
                  f"loss {r['first_loss']}", flush=True)
        naive = timed.get("naive")
        by = {r["layout"]: r for r in results if r["loss"] == loss}
        for layout in layouts:
            if naive and layout != "naive":
                ratios[f"{loss}_{layout}"] = {
                    "speedup": round(by[layout]["tokens_per_s"] / by["naive"]["tokens_per_s"], 2),
                    "mem_ratio": round(by[layout]["peak_rss_growth_mb"] / max(by["naive"]["peak_rss_growth_mb"], 1e-9), 2)}
    setup = {k: getattr(a, k) for k in ("prompts", "k", "prompt_len", "resp_len", "layers", "embd", "vocab",
                                         "steps", "threads")}
    print(json.dumps({"bench": "train", "setup": setup, "results": results, "ratios": ratios}))


if __name__ == "__main__":
    main()
