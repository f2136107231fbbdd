"""Self-instruct generators and answer selection (evol/self_instruct.py), with a scripted model."""
from __future__ import annotations

import pytest

from evol import self_instruct as si
from evol import tasks as T
from rank.plugins import UnknownNameError
from rank.records import write_jsonl

MODEL_QUESTIONS = """Here you go.
### Question
Return the number of vowels in the string s (a, e, i, o, u, case-insensitive).
def count_vowels(s):
### Question
Sorry, no signature in this one.
### Question
Return the list xs without its duplicates, first occurrences kept in order.
def unique(xs: list) -> list:
"""


def test_model_questions_parsed_with_signatures_and_prompts_use_topics_and_seeds():
    prompts: list[str] = []

    def generate(batch):
        prompts.extend(batch)
        return [MODEL_QUESTIONS] * len(batch)

    seeds = T.generate_problems(3, seed=0)
    qs = si.question_generator("model")(4, 0, generate, topics=["strings"], seeds=seeds, per_prompt=2)
    assert [q.entry_point for q in qs] == ["count_vowels", "unique"]       # duplicates across answers merged
    assert qs[1].prompt.endswith("def unique(xs: list) -> list:") and not qs[0].tests
    assert len(prompts) == 2 and "about strings" in prompts[0] and "example" in prompts[0]


def test_model_tests_keep_questions_with_enough_asserts():
    qs = si.parse_questions(MODEL_QUESTIONS)
    answers = {"count_vowels": "assert count_vowels('aE') == 2\nassert count_vowels('') == 0\nassert count_vowels('xyz') == 0",
               "unique": "assert unique([1, 1]) == [1]\nprint('no')"}
    kept, dropped = si.test_generator("model")(qs, lambda b: [answers[q.entry_point] for q in qs], min_tests=3)
    assert [q.entry_point for q in kept] == ["count_vowels"] and len(kept[0].tests) == 3
    assert [d["code"] for d in dropped] == ["too_few_tests"]


def test_task_generators_and_question_rows_round_trip(tmp_path):
    qs = si.question_generator("tasks")(5, 0)
    assert all(not q.tests and q.reference is None and q.meta["split"] == "train" for q in qs)
    write_jsonl(tmp_path / "q.jsonl", qs)
    back = si.read_questions(str(tmp_path / "q.jsonl"))
    kept, dropped = si.test_generator("tasks")(back)
    assert not dropped and [q.tests for q in kept] == [p.tests for p in T.generate_problems(5, seed=0)]
    with pytest.raises(UnknownNameError, match="did you mean 'tasks'"):
        si.question_generator("task")


def test_first_passing_is_the_answer_and_failures_are_rejected_answers():
    (p,) = T.generate_problems(1, seed=0)
    cands = [{"id": f"c{i}", "problem_id": p.id, "model": "m", "code": code}
             for i, code in enumerate(["bad1", "good1", "bad1", "good2", "bad2"])]
    status = {"c0": "failed", "c1": "passed", "c2": "failed", "c3": "passed", "c4": "runtime_error"}
    (chosen,) = si.first_passing([p], cands, status)
    assert chosen[0].reference == "good1" and chosen[1]["id"] == "c1"
    sft, dpo = si.training_rows([chosen], status)
    assert [r["completion"] for r in sft] == ["good1"]
    assert [(r["chosen"], r["rejected"], r["rejected_status"]) for r in dpo] == [
        ("good1", "bad1", "failed"), ("good1", "bad2", "runtime_error")]
    assert si.first_passing([p], cands, {c: "failed" for c in status}) == []
