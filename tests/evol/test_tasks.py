"""The built-in task family: determinism, held-out disjointness, trustworthy tests."""
from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys

import pytest

from evol import tasks as T
from rank.records import Problem, from_dict, to_dict


@pytest.fixture(scope="module")
def train():
    return T.generate_problems(600, "train", seed=0, max_depth=3)


@pytest.fixture(scope="module")
def heldout():
    return T.generate_problems(150, "heldout", seed=0, max_depth=3)


def _run(problem: Problem, code: str) -> list[bool]:
    fn = T.compile_reference(code)
    results = []
    for t in problem.tests:
        try:
            exec(t, {T.ENTRY_POINT: fn})
            results.append(True)
        except AssertionError:
            results.append(False)
    return results


def test_deterministic_and_distinct():
    a = T.generate_problems(40, "train", seed=3)
    b = T.generate_problems(40, "train", seed=3)
    c = T.generate_problems(40, "train", seed=4)
    assert [p.id for p in a] == [p.id for p in b]
    assert len({p.id for p in a}) == 40
    assert [p.id for p in a] != [p.id for p in c]


def test_problem_records(train):
    for p in train[:100]:
        assert p.id == Problem.make_id(p.prompt, p.entry_point)
        assert p.lineage.source == "tasks" and p.lineage.parent is None and p.lineage.round == 0
        assert p.prompt.endswith("\ndef f(xs):") and p.entry_point == "f"
        assert len(p.tests) >= 5 and all(t.startswith("assert f(") for t in p.tests)
        back = from_dict(Problem, json.loads(json.dumps(to_dict(p))))   # survives a JSONL round trip
        assert back == p and T.task_of(back) is not None


def test_references_pass_their_tests_and_tests_discriminate(train, heldout):
    for p in train[:200] + heldout[:50]:
        assert all(_run(p, p.reference))
        assert len({t.split(" == ")[1] for t in p.tests}) >= T.MIN_DISTINCT_OUTPUTS
        # a program that ignores the input must fail some test
        assert not all(_run(p, "def f(xs):\n    return 0\n"))
        assert not all(_run(p, "def f(xs):\n    return xs\n"))


def test_one_line_per_clause(train):
    for p in train[:100]:
        task = T.task_of(p)
        spec_line = p.prompt.split("\n")[0]
        body = p.reference.strip().split("\n")[1:]
        assert len(body) == len(task.steps) == spec_line.count(", ") - spec_line.count(", or 0") + 1
        for (name, k), line in zip(task.steps, body):
            assert line.strip() == T.PRIMITIVES[name].code.format(k=k)


def test_depth_range_and_split(train, heldout):
    assert {p.meta["depth"] for p in train} == {1, 2, 3}
    assert all(p.meta["split"] == "train" for p in train)
    assert all(p.meta["split"] == "heldout" for p in heldout)
    deep = T.generate_problems(20, "train", seed=0, min_depth=4, max_depth=5)
    assert {p.meta["depth"] for p in deep} <= {4, 5}


def test_heldout_rule_is_the_documented_hash(train, heldout):
    for p in train[:50] + heldout[:50]:
        key = "+".join(sorted(n for n, _ in p.meta["steps"]))
        bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % T.HELDOUT_BUCKETS
        assert (bucket == 0) == (p.meta["split"] == "heldout")


def test_heldout_disjoint_by_construction(train, heldout):
    train_sets = {p.meta["primitive_set"] for p in train}
    held_sets = {p.meta["primitive_set"] for p in heldout}
    assert train_sets and held_sets and not train_sets & held_sets
    assert not {p.prompt for p in train} & {p.prompt for p in heldout}
    # reordering steps or changing constants of a held-out task never makes a training task
    for p in heldout[:30]:
        task = T.task_of(p)
        *body, last = task.steps
        for perm in itertools.islice(itertools.permutations(body), 6):
            consts = [(n, T.PRIMITIVES[n].consts[0] if k is not None else None) for n, k in perm]
            assert T.split_of(T.Task(tuple(consts) + (last,))) == "heldout"
    # held-out = unseen combinations of primitives that all occur in training
    seen = {n for p in train for n, _ in p.meta["steps"]}
    assert {n for p in heldout for n, _ in p.meta["steps"]} <= seen
    assert seen == set(T.PRIMITIVES)


def test_task_validation():
    with pytest.raises(T.TaskError):
        T.Task((("even", None), ("even", None), ("sum", None)))     # primitive used twice
    with pytest.raises(T.TaskError):
        T.Task((("sum", None), ("even", None)))                     # terminal not last
    with pytest.raises(T.TaskError):
        T.Task((("mul", 7), ("sum", None)))                         # constant outside the table
    with pytest.raises(T.TaskError):
        T.render(T.Task((("even", None), ("odd", None), ("sum", None))))   # always 0: not discriminative


@pytest.mark.parametrize("kwargs", [dict(split="test"), dict(min_depth=0), dict(min_depth=3, max_depth=2)])
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        T.generate_problems(3, **kwargs)


def test_spec_example():
    task = T.Task((("even", None), ("mul", 3), ("sum", None)))
    assert T.prompt(task) == "Keep the even numbers, multiply each by 3, then return the sum.\ndef f(xs):"
    assert T.reference(task) == ("def f(xs):\n    xs = [x for x in xs if x % 2 == 0]\n"
                                 "    xs = [x * 3 for x in xs]\n    return sum(xs)\n")


def test_evol_imports_neither_align_nor_torch():
    code = ("import sys, evol.tasks, evol.evolve, evol.llm_evolve; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('align', 'torch', 'transformers')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
