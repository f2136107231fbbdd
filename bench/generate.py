"""Batched generation vs one-by-one, same backend code, same prompts, same run.

    .venv/bin/python bench/generate.py [--prompts 32] [--batch-size 16] [--new-tokens 32] [--threads 2]

A random-init GPTBigCode (StarCoder's architecture) with the GPT-2 tokenizer from
../shared/data (or --tokenizer DIR) samples greedily, so both runs must give identical text;
the last line is JSON with the throughput ratio.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align.generate import HFBackend, SamplingParams  # noqa: E402

DEFAULT_TOKENIZER = Path(__file__).resolve().parents[2] / "shared/data/tokenizers/gpt2"
SPECS = ["Return the sum of a and b.", "Reverse a list of integers and drop the negative ones.",
         "Count the vowels in a string, ignoring case.", "Return the n-th Fibonacci number.",
         "Merge two sorted lists into one sorted list without using sort.", "Check if a string is a palindrome."]


def make_prompts(n: int) -> list[str]:
    from align.prompting import format_prompt

    # Varied lengths, so sorting by length and padding both matter.
    return [format_prompt(SPECS[i % len(SPECS)] + " Example input" * (i % 5) + f"\ndef f{i}(x):")
            for i in range(n)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER))
    a = ap.parse_args(argv)

    import torch
    from transformers import AutoTokenizer, GPTBigCodeConfig, GPTBigCodeForCausalLM

    torch.set_num_threads(a.threads)
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    torch.manual_seed(0)
    cfg = GPTBigCodeConfig(n_layer=a.n_layer, n_embd=a.n_embd, n_head=8, multi_query=True, vocab_size=len(tok),
                           n_positions=512, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    model = GPTBigCodeForCausalLM(cfg)
    prompts = make_prompts(a.prompts)
    # No stop strings: both runs generate exactly --new-tokens per prompt unless EOS comes first.
    params = SamplingParams(temperature=0, max_new_tokens=a.new_tokens, stop=[])

    runs = {}
    for name, bs in (("one_by_one", 1), ("batched", a.batch_size)):
        backend = HFBackend(model, tokenizer=tok, batch_size=bs)
        backend.generate(prompts[:2], SamplingParams(temperature=0, max_new_tokens=2, stop=[]))   # warm-up
        t0 = time.perf_counter()
        outs = backend.generate(prompts, params)
        dt = time.perf_counter() - t0
        n_tok = sum(len(tok(o[0], add_special_tokens=False)["input_ids"]) for o in outs)
        runs[name] = {"seconds": dt, "completions_per_s": len(prompts) / dt, "tokens_per_s": n_tok / dt,
                      "outs": outs}
        print(f"{name:>10} (batch {bs:>3}): {dt:7.2f} s  {len(prompts) / dt:7.2f} completions/s  "
              f"{n_tok / dt:8.1f} new tokens/s")
    same = sum(x == y for x, y in zip(runs["batched"]["outs"], runs["one_by_one"]["outs"])) / len(prompts)
    result = {"bench": "generate", "prompts": a.prompts, "batch_size": a.batch_size, "new_tokens": a.new_tokens,
              "threads": a.threads, "model": f"GPTBigCode n_layer={a.n_layer} n_embd={a.n_embd} vocab={len(tok)}",
              "one_by_one_completions_per_s": round(runs["one_by_one"]["completions_per_s"], 3),
              "batched_completions_per_s": round(runs["batched"]["completions_per_s"], 3),
              "ratio": round(runs["one_by_one"]["seconds"] / runs["batched"]["seconds"], 2),
              "identical_outputs": same}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
