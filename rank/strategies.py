"""Ranking strategies: turn a problem's candidates and verdicts into a RankedGroup.

A strategy is a function `(problem_id, prompt, responses) -> RankedGroup | None` over
`ScoredResponse` rows whose `score` is still unset; it sets scores, orders best first,
and may drop the group (returns None). Built-ins live in `STRATEGIES`; a user's own is
given as `package.module:function` (rank.plugins.resolve).
"""
from __future__ import annotations

from typing import Callable

from .plugins import resolve
from .records import RankedGroup, ScoredResponse

# PanGu-Coder2 (arXiv:2307.14936 §3.4) buckets outcomes: compile error < runtime error <
# partial pass < all pass. Timeouts, memory kills and sandbox errors count as runtime errors
# (the program was valid but did not finish a test); "failed" (ran, every test wrong) is the
# bottom of the partial bucket with 0 tests passed.
OUTCOME = {
    "compile_error": 0, "runtime_error": 1, "timeout": 1, "memory": 1, "sandbox_error": 1,
    "failed": 2, "partial": 2, "passed": 3,
}


def outcome_score(r: ScoredResponse) -> float:
    """The bucket, plus the passed fraction inside the partial bucket (in [0, 1))."""
    bucket = OUTCOME[r.status]
    if bucket == 2 and r.total:
        return 2 + min(r.passed / r.total, 0.99)
    return float(bucket)


def pangu(problem_id: str, prompt: str, responses: list[ScoredResponse]) -> RankedGroup | None:
    """PanGu-Coder2's rule: outcome buckets; on equal outcome the teacher ranks higher;
    a prompt is dropped when its best teacher response scores below its best student response
    (the paper trains only where the teacher is at least as good), or has no teacher or student."""
    for r in responses:
        r.score = outcome_score(r)
    teachers = [r for r in responses if r.role == "teacher"]
    students = [r for r in responses if r.role == "student"]
    if not teachers or not students:
        return None
    if max(r.score for r in teachers) < max(r.score for r in students):
        return None
    ordered = sorted(responses, key=lambda r: (r.score, r.role == "teacher"), reverse=True)
    return RankedGroup(problem_id=problem_id, prompt=prompt, strategy="pangu", responses=ordered)


def pass_rate(problem_id: str, prompt: str, responses: list[ScoredResponse]) -> RankedGroup | None:
    """Score = fraction of tests passed (compile errors -1); keeps every group with two or more responses."""
    for r in responses:
        r.score = -1.0 if r.status == "compile_error" else (r.passed / r.total if r.total else 0.0)
    if len(responses) < 2:
        return None
    ordered = sorted(responses, key=lambda r: r.score, reverse=True)
    return RankedGroup(problem_id=problem_id, prompt=prompt, strategy="pass_rate", responses=ordered)


Strategy = Callable[[str, str, list[ScoredResponse]], "RankedGroup | None"]
STRATEGIES: dict[str, Strategy] = {"pangu": pangu, "pass_rate": pass_rate}


def get_strategy(name: str) -> Strategy:
    return resolve(STRATEGIES, name, "ranking strategy")
