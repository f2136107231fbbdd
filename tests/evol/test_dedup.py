"""Dedup and decontamination. Run: .venv/bin/python -m pytest tests/evol/test_dedup.py"""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from evol.dedup import Dropped, MinHash, exact_dedup, jaccard, near_dedup, ngrams, normalize, tokens
from rank.records import Problem

DATA = Path(__file__).parents[2].parent / "shared/data"
HUMANEVAL = DATA / "humaneval/HumanEval.jsonl.gz"

WORDS = ("list string integer return sort reverse count sum maximum minimum element index value pair "
         "number even odd prime vowel digit character word sentence matrix row column").split()


def _spec(rng: random.Random, n: int = 30) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _problem(pid: str, prompt: str, reference: str | None = None) -> Problem:
    return Problem(id=pid, prompt=prompt, entry_point="f", tests=["assert f() is None"], reference=reference)


def test_normalize_ignores_case_and_layout():
    assert normalize("def  F(x):\n\treturn X+1") == normalize("def f( x ):  return x + 1")
    assert tokens("a_b(1)") == ["a_b", "(", "1", ")"]


def test_exact_dedup_keeps_first_and_gives_reasons():
    rows = [_problem("a", "Sum a list."), _problem("b", "sum  a LIST."), _problem("c", "Sum a tuple.")]
    kept, dropped = exact_dedup(rows)
    assert [r.id for r in kept] == ["a", "c"]
    assert [d.row.id for d in dropped] == ["b"] and "exact duplicate of a" in dropped[0].reason
    assert exact_dedup(["x", "X", "y"])[0] == ["x", "y"]          # plain strings work too


def test_minhash_estimates_jaccard():
    rng = random.Random(0)
    a = ngrams(tokens(_spec(rng, 200)), 3)
    b = set(list(a)[: len(a) // 2]) | ngrams(tokens(_spec(rng, 100)), 3)
    mh = MinHash(num_perm=256, rows=4)
    sa, sb = mh.signature(a), mh.signature(b)
    est = sum(x == y for x, y in zip(sa, sb)) / len(sa)
    assert est == pytest.approx(jaccard(a, b), abs=0.1)


def test_near_dedup_drops_small_edits_keeps_distinct():
    rng = random.Random(1)
    base = [_spec(rng, 60) for _ in range(20)]
    edited = []
    for text in base[:5]:                  # change 1 of 60 words: 5 of 56 shingles differ, Jaccard ~0.84
        words = text.split()
        words[30] = "zebra"
        edited.append(" ".join(words))
    rows = [_problem(f"p{i}", t) for i, t in enumerate(base)] + [_problem(f"e{i}", t) for i, t in enumerate(edited)]
    kept, dropped = near_dedup(rows, threshold=0.7)
    assert [r.id for r in kept] == [f"p{i}" for i in range(20)]
    assert sorted(d.row.id for d in dropped) == [f"e{i}" for i in range(5)]
    assert all(isinstance(d, Dropped) and "near duplicate of p" in d.reason for d in dropped)
    # A threshold of 1.0 keeps edited rows (they are not identical).
    assert len(near_dedup(rows, threshold=1.0)[0]) == 25


def test_near_dedup_rejects_bad_threshold():
    with pytest.raises(ValueError):
        near_dedup(["a"], threshold=0)
