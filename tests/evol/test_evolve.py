"""Evol-Instruct on built-in tasks (programmatic) and on other problems (LLM path)."""
from __future__ import annotations

import sys
import types
from collections import Counter

import pytest

from evol import evolve as E
from evol import tasks as T
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
        assert set(r) == {"parent", "round", "operator", "reason"} and r["reason"]
    reasons = Counter(r["reason"].split(":")[0].split(" (")[0] for r in result.rejected)
    assert "would land in the held-out split" in reasons


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
    assert not res.evolved and all(r["reason"].startswith("too deep") for r in res.rejected)


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
        assert not res.evolved and res.rejected[0]["reason"] == "duplicate of an existing problem"
        assert res.rejected[0]["operator"] == "user_ops_for_test:to_existing"
        sums = [p for p in seeds if T.task_of(p).steps[-1][0] == "sum"
                and "sort" not in T.task_of(p).names() and T.split_of(T.Task((("sort", None),) + T.task_of(p).steps)) == "train"]
        res = E.evolve(sums[:3], rounds=1, operators=["user_ops_for_test:vacuous"])
        assert {r["reason"].split(" (")[0] for r in res.rejected} == {"behaviour unchanged"}
    finally:
        del sys.modules[mod.__name__]


def test_unknown_operator_suggests():
    with pytest.raises(UnknownNameError, match="did you mean 'deepen'"):
        E.evolve([], rounds=1, operators=["deepn"])
    with pytest.raises(ValueError):
        E.evolve([], rounds=-1)


# ------------------------------------------------------------------ LLM path

FOREIGN = Problem(id="x1", prompt="Return the n-th Fibonacci number.\ndef fib(n):", entry_point="fib",
                  tests=["assert fib(1) == 1"], lineage=Lineage(source="humaneval"))

GOOD = """### Problem
Return the n-th Fibonacci number modulo 7.
def fib(n):
### Tests
assert fib(1) == 1
assert fib(2) == 1
assert fib(10) == 55 % 7
assert fib(  # broken line is dropped
"""


def test_llm_path_accepts_answers_with_tests():
    prompts: list[str] = []

    def generate(batch: list[str]) -> list[str]:
        prompts.extend(batch)
        return [GOOD] * len(batch)

    res = E.evolve([FOREIGN], rounds=1, operators=["add_constraint"], generate=generate)
    (p,) = res.evolved
    assert "Given problem" in prompts[0] and "Fibonacci" in prompts[0] and "### Tests" in prompts[0]
    assert p.tests == ["assert fib(1) == 1", "assert fib(2) == 1", "assert fib(10) == 55 % 7"]
    assert p.lineage == Lineage(parent="x1", round=1, operator="add_constraint", source="humaneval")
    assert p.reference is None and p.meta["tests_verified"] is False
    assert p.id == Problem.make_id(p.prompt, "fib")


@pytest.mark.parametrize("answer,reason", [
    ("### Problem\nHarder.\ndef fib(n):\n### Tests\n", "usable tests"),
    ("Sure! Here is a harder problem.", "layout"),
    ("### Problem\nHarder.\ndef g(n):\n### Tests\nassert g(1) == 1\n", "signature"),
])
def test_llm_path_rejects_answers_without_tests(answer, reason):
    res = E.evolve([FOREIGN], rounds=1, generate=lambda batch: [answer] * len(batch))
    assert not res.evolved and reason in res.rejected[0]["reason"]


def test_foreign_problem_without_generate_is_rejected():
    res = E.evolve([FOREIGN], rounds=1)
    assert res.rejected == [{"parent": "x1", "round": 1, "operator": res.rejected[0]["operator"],
                             "reason": "not a built-in task and no generate callable given"}]
