"""Ranking strategies: turn a problem's candidates and verdicts into a RankedGroup.

A strategy is a function `(problem_id, prompt, responses) -> RankedGroup | None` over
`ScoredResponse` rows whose `score` is still unset; it sets scores, orders best first,
and may drop the group (returns None). Built-ins live in `STRATEGIES`; a user's own is
given as `package.module:function` (rank.plugins.resolve).

    pangu            PanGu-Coder2's outcome buckets (arXiv:2307.14936 §3.4), teacher first on a tie
    pass_rate        fraction of tests passed (compile error -1)
    pass_rate_length pass_rate, then shorter code first among equal pass rates
    pass_rate_time   pass_rate, then faster run first among equal pass rates
    codet            CodeT's dual execution agreement (arXiv:2207.10397) on the per-test pass vector

Scores are what the losses see as gaps (align/train/losses.py): pangu steps by 1 per outcome level,
the others lie in [-1, 1]. Several strategies over the same verdicts are compared with
`rank.agreement` (config `rank.strategies`).
"""
from __future__ import annotations

from collections import Counter
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

# A tie-break moves a score by at most this much: less than any pass-rate difference (1/total for
# total < 1000), so it only orders responses of equal pass rate. Losses that pair any positive gap
# (RRHF, DPO with min_gap=0) then pair such responses too; DPO's `min_gap` can keep them apart.
TIE_BREAK = 1e-3


def outcome_score(r: ScoredResponse) -> float:
    """The bucket, plus the passed fraction inside the partial bucket (in [0, 1))."""
    bucket = OUTCOME[r.status]
    if bucket == 2 and r.total:
        return 2 + min(r.passed / r.total, 0.99)
    return float(bucket)


def pass_fraction(r: ScoredResponse) -> float:
    """Fraction of tests passed; -1 for a compile error (it ran nothing)."""
    return -1.0 if r.status == "compile_error" else (r.passed / r.total if r.total else 0.0)


def _group(name: str, problem_id: str, prompt: str, responses: list[ScoredResponse]) -> RankedGroup:
    """Best first; on an equal score the teacher first, then the original order (stable sort)."""
    ordered = sorted(responses, key=lambda r: (r.score, r.role == "teacher"), reverse=True)
    return RankedGroup(problem_id=problem_id, prompt=prompt, strategy=name, responses=ordered)


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
    return _group("pangu", problem_id, prompt, responses)


def pass_rate(problem_id: str, prompt: str, responses: list[ScoredResponse]) -> RankedGroup | None:
    """Score = fraction of tests passed (compile errors -1); keeps every group with two or more responses."""
    for r in responses:
        r.score = pass_fraction(r)
    return _group("pass_rate", problem_id, prompt, responses) if len(responses) >= 2 else None


def _tie_broken(name: str, cost: Callable[[ScoredResponse], float]):
    """pass_rate, then the lower `cost` first among equal pass rates: the cheapest of a tie gains
    TIE_BREAK, the dearest nothing, linear in between (scaled within the tie, so units do not matter)."""
    def strategy(problem_id: str, prompt: str, responses: list[ScoredResponse]) -> RankedGroup | None:
        if len(responses) < 2:
            return None
        ties: dict[float, list[ScoredResponse]] = {}
        for r in responses:
            ties.setdefault(pass_fraction(r), []).append(r)
        for base, tied in ties.items():
            costs = [cost(r) for r in tied]
            lo, hi = min(costs), max(costs)
            for r, c in zip(tied, costs):
                r.score = base + (TIE_BREAK * (hi - c) / (hi - lo) if hi > lo else 0.0)
        return _group(name, problem_id, prompt, responses)
    strategy.__name__ = name
    strategy.__doc__ = f"pass_rate; among equal pass rates the lower {name.rpartition('_')[2]} ranks first."
    return strategy


pass_rate_length = _tie_broken("pass_rate_length", lambda r: len(r.code.strip()))
pass_rate_time = _tie_broken("pass_rate_time", lambda r: r.duration_s)


def pass_vector(r: ScoredResponse) -> tuple[bool, ...]:
    """Which of the `total` tests the response passed, from the verdict's per-test outcomes.
    Raises ValueError when the verdict predates per-test outcomes (the vector would be a guess)."""
    vec = tuple(o == "pass" for o in r.outcomes[:r.total])
    if sum(vec) != r.passed:
        raise ValueError(f"candidate {r.candidate_id}: its verdict has {r.passed} passed tests but "
                         f"{sum(vec)} 'pass' outcomes; verdicts without per-test outcomes (written before "
                         f"Verdict.outcomes existed) cannot be ranked by codet: re-run the execute stage")
    return vec + (False,) * (r.total - len(vec))


def codet(problem_id: str, prompt: str, responses: list[ScoredResponse]) -> RankedGroup | None:
    """CodeT's dual execution agreement (arXiv:2207.10397 §2.2): responses that pass exactly the same
    tests form a consensus set S; every member scores |S| * |tests S passes|, normalised here by
    (responses * tests) into [0, 1]. A response that passes everything alone scores below a set of
    agreeing ones that pass fewer tests: CodeT trusts agreement, which is the point of comparing it
    with the test-trusting rankers. Agreement is on which tests pass; the verdicts do not record each
    test's output values, so two different wrong outputs of one test agree here."""
    if len(responses) < 2:
        return None
    vectors = [pass_vector(r) for r in responses]
    sizes = Counter(vectors)
    n_tests = max((len(v) for v in vectors), default=0) or 1
    for r, v in zip(responses, vectors):
        r.score = sizes[v] * sum(v) / (len(responses) * n_tests)
    return _group("codet", problem_id, prompt, responses)


Strategy = Callable[[str, str, list[ScoredResponse]], "RankedGroup | None"]
STRATEGIES: dict[str, Strategy] = {
    "pangu": pangu, "pass_rate": pass_rate, "pass_rate_length": pass_rate_length,
    "pass_rate_time": pass_rate_time, "codet": codet,
}


def get_strategy(name: str) -> Strategy:
    return resolve(STRATEGIES, name, "ranking strategy")
