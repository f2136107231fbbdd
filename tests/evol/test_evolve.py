"""Evol-Instruct on built-in tasks (programmatic) and on other problems (LLM path)."""
from __future__ import annotations

import sys
import types
from collections import Counter

import pytest

from evol import evolve as E
from evol import tasks as T
from evol.reasons import REASONS
from rank.plugins import UnknownNameError
from rank.records import Lineage, Problem


@pytest.fixture(scope="module")
def seeds():
    return T.generate_problems(120, "train", seed=1)


@pytest.fixture(scope="module")
def result(seeds):
    return E.evolve(seeds, rounds=2, seed=0)


def _passes(p: Problem) -> bool:
    fn = T.compile_reference(p.reference)
    for t in p.tests:
        exec(t, {"f": fn})
    return True


def test_lineage_and_rounds(seeds, result):
    assert result.problems[: len(seeds)] == seeds
    by_id = {p.id: p for p in result.problems}
    assert len(by_id) == len(result.problems)                      # no duplicates
    assert result.evolved and {p.lineage.round for p in result.evolved} == {1, 2}
    for p in result.evolved:
        parent = by_id[p.lineage.parent]
        assert parent.lineage.round == p.lineage.round - 1
        assert p.lineage.operator in E.OPERATORS and p.lineage.source == "tasks"
        assert p.meta["split"] == "train" and len(p.tests) >= 5 and _passes(p)
        assert p.reference != parent.reference


def test_rejections_are_recorded_with_reasons(seeds, result):
    n_round1 = sum(p.lineage.round == 1 for p in result.evolved)
    assert n_round1 + sum(r["round"] == 1 for r in result.rejected) == len(seeds)   # every seed accounted for
    for r in result.rejected:
        assert set(r) == {"parent", "round", "operator", "code", "detail", "reason"} and r["detail"]
        assert r["code"] in REASONS
    reasons = Counter(r["code"] for r in result.rejected)
    assert reasons["split_change"] > 0
    stats = result.stats()
    assert sum(n for ops in stats["rejected"].values() for codes in ops.values() for n in codes.values()) \
        == len(result.rejected) == sum(stats["rejected_by_code"].values())
    assert all(p.meta["tests_verified"] == "reference" for p in result.evolved)


def _child(seed_task: T.Task, op: str, seed: int = 0) -> T.Task | None:
    p = T.render(seed_task)
    res = E.evolve([p], rounds=1, operators=[op], seed=seed)
    return T.task_of(res.evolved[0]) if res.evolved else None


@pytest.mark.parametrize("op,kinds,delta", [
    ("add_constraint", {"filter"}, 1),
    ("add_step", {"map", "reorder"}, 1),
    ("deepen", {"map", "filter"}, 2),
])
def test_growing_operators(seeds, op, kinds, delta):
    res = E.evolve(seeds[:40], rounds=1, operators=[op], seed=0)
    assert res.evolved
    by_id = {p.id: p for p in seeds}
    for child in res.evolved:
        parent, new = T.task_of(by_id[child.lineage.parent]), T.task_of(child)
        assert new.depth == parent.depth + delta and new.steps[-1] == parent.steps[-1]
        added = Counter(new.names()) - Counter(parent.names())
        assert added and {T.PRIMITIVES[n].kind for n in added} <= kinds


def test_swap_requirement_replaces_a_common_one_with_a_rare_one(seeds):
    res = E.evolve(seeds[:40], rounds=1, operators=["swap_requirement"], seed=0)
    assert res.evolved
    by_id = {p.id: p for p in seeds}
    for child in res.evolved:
        old, new = T.task_of(by_id[child.lineage.parent]), T.task_of(child)
        assert old.depth == new.depth
        diff = [(a, b) for a, b in zip(old.steps, new.steps) if a != b]
        assert len(diff) == 1
        (a, _), (b, _) = diff[0]
        assert T.PRIMITIVES[a].common and not T.PRIMITIVES[b].common
        assert T.PRIMITIVES[a].kind == T.PRIMITIVES[b].kind


def test_too_deep_is_rejected():
    deep = T.generate_problems(5, "train", seed=0, min_depth=5, max_depth=5)
    res = E.evolve(deep, rounds=1, operators=["deepen"])
    assert not res.evolved and all(r["code"] == "too_deep" for r in res.rejected)


def test_deterministic(seeds):
    a = E.evolve(seeds[:30], rounds=2, seed=5)
    b = E.evolve(seeds[:30], rounds=2, seed=5)
    assert [p.id for p in a.problems] == [p.id for p in b.problems] and a.rejected == b.rejected


def test_user_operator_by_path_and_duplicates(seeds):
    target = seeds[1]
    mod = types.ModuleType("user_ops_for_test")
    mod.to_existing = lambda task, rng: T.task_of(target)           # always yields an existing problem
    mod.vacuous = lambda task, rng: T.Task((("sort", None),) + task.steps) if task.steps[-1][0] == "sum" else None
    sys.modules[mod.__name__] = mod
    try:
        res = E.evolve([seeds[0], target], rounds=1, operators=["user_ops_for_test:to_existing"])
        by_parent = {r["parent"]: r for r in res.rejected}
        assert not res.evolved and by_parent[seeds[0].id]["code"] == "duplicate"
        assert by_parent[seeds[0].id]["operator"] == "user_ops_for_test:to_existing"
        sums = [p for p in seeds if T.task_of(p).steps[-1][0] == "sum"
                and "sort" not in T.task_of(p).names() and T.split_of(T.Task((("sort", None),) + T.task_of(p).steps)) == "train"]
        res = E.evolve(sums[:3], rounds=1, operators=["user_ops_for_test:vacuous"])
        assert {r["code"] for r in res.rejected} == {"behaviour_unchanged"}
    finally:
        del sys.modules[mod.__name__]


def test_unknown_operator_suggests():
    with pytest.raises(UnknownNameError, match="did you mean 'deepen'"):
        E.evolve([], rounds=1, operators=["deepn"])
    with pytest.raises(ValueError):
        E.evolve([], rounds=-1)


# ------------------------------------------------------------------ LLM path
# A scripted generate callable stands in for the model here; tests/evol/test_served_teacher.py
# drives the same path through a real OpenAI-compatible server.

FOREIGN = Problem(id="x1", prompt="Return the n-th Fibonacci number.\ndef fib(n):", entry_point="fib",
                  tests=["assert fib(1) == 1"], reference="def fib(n):\n    return n if n < 2 else fib(n-1) + fib(n-2)\n",
                  lineage=Lineage(source="humaneval"))
SOLUTION = "```python\ndef fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a % 7\n```"
GOOD = f"""### Problem
Return the n-th Fibonacci number modulo 7.
def fib(n):
### Solution
{SOLUTION}
### Tests
assert fib(1) == 1
assert fib(2) == 1
assert fib(10) == 55 % 7
assert fib(8) == 21 % 7
assert fib(9) == 99
assert fib(  # broken line is dropped
"""


def answer(tests: str, problem: str = "Return the n-th Fibonacci number modulo 7.\ndef fib(n):",
           solution: str = SOLUTION) -> str:
    return f"### Problem\n{problem}\n### Solution\n{solution}\n### Tests\n{tests}\n"


def test_llm_path_keeps_verified_problems_and_drops_tests_the_reference_fails():
    prompts: list[str] = []

    def generate(batch: list[str]) -> list[str]:
        prompts.extend(batch)
        return [GOOD] * len(batch)

    res = E.evolve([FOREIGN], rounds=1, operators=["add_constraint"], generate=generate, framing="contest")
    (p,) = res.evolved
    assert "contest" in prompts[0] and "Fibonacci" in prompts[0] and "### Tests" in prompts[0]
    # the wrong expectation fib(9) == 99 is dropped, the three the reference passes stay
    assert p.tests == ["assert fib(1) == 1", "assert fib(2) == 1", "assert fib(10) == 55 % 7",
                       "assert fib(8) == 21 % 7"]
    assert p.lineage == Lineage(parent="x1", round=1, operator="add_constraint", source="humaneval")
    assert p.reference.startswith("def fib(n):") and p.meta["tests_verified"] == "reference"
    assert p.meta["verification"]["tests_dropped"] == 1
    assert p.id == Problem.make_id(p.prompt, "fib")


@pytest.mark.parametrize("text,code", [
    (answer("assert fib(1) == 5\nassert fib(2) == 5\nassert fib(3) == 5\nassert fib(4) == 1"), "reference_fails"),
    (answer("assert fib(1) == 1", problem="Harder: modulo 7.\ndef g(n):"), "signature_lost"),
    (answer("assert fib(1) == 1\nassert fib(2) == 1\nassert fib(3) == 2",
            solution="```python\ndef fibonacci(n):\n    return 1\n```"), "signature_lost"),
    ("I'm sorry, but I cannot help with making this problem harder, as it is already hard enough.", "refusal"),
    ("As an AI language model I can't create new problems for you, please ask a person instead.", "refusal"),
    ("fib(n) % 7", "too_short"),
    (answer("(at least 3 lines, each one `assert fib(...) == ...` with the exact expected value)"),
     "copies_template"),
    ("Original problem:\nReturn the n-th Fibonacci number.\ndef fib(n):\nChange to make: add a step.", "copies_template"),
    ("Sure! Here is a harder problem: return fib(n) modulo seven, for any n at all, quickly.", "bad_layout"),
    (answer("assert fib(1) == 1\nassert fib(2) == 1\nassert fib(3) == 2",
            problem="Return the n-th Fibonacci number.\ndef fib(n):"), "no_information_gain"),
    (answer("assert fib(1) == 1\nassert fib(2) == 1"), "too_few_tests"),
    (answer("assert fib(0) == 0\nassert fib(7) == 0\nassert fib(14) == 0",
            solution="```python\ndef fib(n):\n    return 0\n```"), "tests_not_discriminative"),
    (answer("assert fib(1) == 1\nassert fib(2) == 1\nassert fib(3) == 2\nassert fib(5) == 5",
            solution="```python\ndef fib(n):\n    return n if n < 2 else fib(n-1) + fib(n-2)\n```"),
     "behaviour_unchanged"),
])
def test_llm_path_rejects_with_the_right_code(text, code):
    res = E.evolve([FOREIGN], rounds=1, operators=["add_constraint"], generate=lambda batch: [text] * len(batch))
    assert not res.evolved
    (row,) = res.rejected
    assert row["code"] == code, row
    assert row["answer"] == text and row["detail"]


def test_complexity_keeps_the_parents_behaviour():
    same = answer("assert fib(1) == 1\nassert fib(2) == 1\nassert fib(3) == 2\nassert fib(5) == 5",
                  problem="Return the n-th Fibonacci number in O(n) time.\ndef fib(n):",
                  solution="```python\ndef fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n```")
    res = E.evolve([FOREIGN], rounds=1, operators=["complexity"], generate=lambda batch: [same] * len(batch))
    assert [p.lineage.operator for p in res.evolved] == ["complexity"]


def test_agreement_with_sampled_solutions():
    """CodeT: tests the majority of independent samples fail are dropped, and the problem says so."""
    right = SOLUTION
    wrong = "```python\ndef fib(n):\n    return 1\n```"
    tests = "assert fib(1) == 1\nassert fib(2) == 1\nassert fib(10) == 55 % 7\nassert fib(8) == 21 % 7\nassert fib(3) == 2"

    def generate(batch):
        return [answer(tests) if "Change to make" in p else right for p in batch]
    res = E.evolve([FOREIGN], rounds=1, operators=["add_step"], generate=generate, agreement_samples=3)
    (p,) = res.evolved
    assert p.meta["tests_verified"] == "agreement" and len(p.tests) == 5
    assert p.meta["verification"]["consensus_size"] == 3

    # samples agreeing on a different behaviour: only the tests they pass survive, too few remain
    def disagree(batch):
        return [answer(tests) if "Change to make" in p else wrong for p in batch]
    res = E.evolve([FOREIGN], rounds=1, operators=["add_step"], generate=disagree, agreement_samples=3)
    assert [r["code"] for r in res.rejected] == ["agreement_failed"]


def test_foreign_problem_without_generate_is_rejected():
    res = E.evolve([FOREIGN], rounds=1)
    assert [(r["code"], r["round"], r["parent"]) for r in res.rejected] == [("no_generator", 1, "x1")]


def test_unknown_framing_fails_early():
    with pytest.raises(ValueError, match="framing"):
        E.evolve([FOREIGN], rounds=1, framing="poetry", generate=lambda b: b)
