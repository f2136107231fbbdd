"""Tests you can trust: verify model-written tests by running them in the sandbox.

    out = verify(drafts, parents, run_tests, samples={draft_id: [code, ...]})   # Problem | Rejection each

A draft (a Problem whose reference and tests a model wrote) is kept only when, executed in
the sandbox one test at a time:
1. its reference passes the tests: tests the reference fails are dropped one by one while at
   least MIN_TESTS remain and the reference passes most of them, else `reference_fails`;
2. the tests are discriminative: every trivial solution (TRIVIAL) fails one, else
   `tests_not_discriminative`; and, for operators that change behaviour, the parent's
   reference fails one, else `behaviour_unchanged`;
3. when independently sampled solutions are given, the tests agree with their majority
   behaviour: samples are grouped by which tests they pass, and the group with the largest
   (samples x tests passed) wins, CodeT's dual agreement (arXiv:2207.10397). Tests outside the
   winning group's passes are dropped while enough remain, else `agreement_failed`.
`meta["tests_verified"]` says how a kept problem was verified: "reference" or "agreement".
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from evol.reasons import Rejection
from rank.records import Problem, Verdict
from rank.sandbox import Job

RunTests = Callable[[list[Job]], list[Verdict]]

MIN_TESTS = 3
# Solutions that know nothing about the problem: tests that one of them passes check nothing.
TRIVIAL: dict[str, str] = {
    "returns_none": "return None",
    "returns_zero": "return 0",
    "returns_false": "return False",
    "returns_empty_list": "return []",
    "returns_first_argument": "return args[0] if args else None",
}


def trivial_code(entry_point: str, body: str) -> str:
    return f"def {entry_point}(*args, **kwargs):\n    {body}\n"


def _job(problem: Problem, code: str, job_id: str, tests: list[str]) -> Job:
    return Job(id=job_id, code=code, tests=list(tests), entry_point=problem.entry_point)


def sandbox_runner(config=None) -> RunTests:
    """`run_tests` backed by rank.sandbox.run_jobs (one pool per call)."""
    from rank.sandbox import run_jobs

    return lambda jobs: run_jobs(jobs, config)


def _consensus(matrix: list[list[bool]]) -> tuple[list[bool], int, int]:
    """CodeT: group solutions by their pass vector; the winning vector, its group size and score."""
    groups: dict[tuple[bool, ...], int] = {}
    for row in matrix:
        groups[tuple(row)] = groups.get(tuple(row), 0) + 1
    vector, size = max(groups.items(), key=lambda kv: (kv[1] * sum(kv[0]), kv[1]))
    return list(vector), size, size * sum(vector)


def verify(drafts: Sequence[Problem], parents: Sequence[Problem | None], run_tests: RunTests,
           changes_behaviour: Sequence[bool] | None = None,
           samples: dict[str, list[str]] | None = None, min_tests: int = MIN_TESTS) -> list[Problem | Rejection]:
    """Verify each draft's tests by execution (one batched sandbox call); see the module docstring."""
    if changes_behaviour is None:
        changes_behaviour = [True] * len(drafts)
    samples = samples or {}
    jobs: list[Job] = []
    for d, parent, changes in zip(drafts, parents, changes_behaviour):
        if not d.reference:
            raise ValueError(f"draft {d.id} has no reference solution to verify its tests against")
        jobs += [_job(d, d.reference, f"{d.id}/ref/{i}", [t]) for i, t in enumerate(d.tests)]
        jobs += [_job(d, trivial_code(d.entry_point, body), f"{d.id}/trivial/{name}/{i}", [t])
                 for name, body in TRIVIAL.items() for i, t in enumerate(d.tests)]
        if changes and parent is not None and parent.reference:
            jobs += [_job(d, parent.reference, f"{d.id}/parent/{i}", [t]) for i, t in enumerate(d.tests)]
        jobs += [_job(d, code, f"{d.id}/sample/{s}/{i}", [t])
                 for s, code in enumerate(samples.get(d.id, [])) for i, t in enumerate(d.tests)]
    passed = {v.candidate_id: v.status == "passed" for v in run_tests(jobs)} if jobs else {}
    return [_decide(d, passed, len(samples.get(d.id, [])), min_tests) for d in drafts]


def _decide(d: Problem, passed: dict[str, bool], n_samples: int, min_tests: int) -> Problem | Rejection:
    n = len(d.tests)
    keep = [i for i in range(n) if passed[f"{d.id}/ref/{i}"]]
    if len(keep) < min_tests or len(keep) * 2 <= n:
        return Rejection("reference_fails", f"the reference passes {len(keep)} of {n} tests "
                                            f"(needs {min_tests} and a majority)")
    verified = "reference"
    agreement: dict = {"samples": n_samples}
    if n_samples:
        matrix = [[passed[f"{d.id}/sample/{s}/{i}"] for i in keep] for s in range(n_samples)]
        vector, size, score = _consensus(matrix)
        agreement.update(consensus_size=size, consensus_tests=sum(vector))
        if score > 0:   # with no sample passing any test there is no majority behaviour to agree with
            agreed = [i for i, ok in zip(keep, vector) if ok]
            if len(agreed) < min_tests:
                return Rejection("agreement_failed", f"the largest agreeing group ({size} of {n_samples} "
                                                     f"samples) passes only {len(agreed)} of {len(keep)} tests")
            keep, verified = agreed, "agreement"
    for name in TRIVIAL:
        if all(passed[f"{d.id}/trivial/{name}/{i}"] for i in keep):
            return Rejection("tests_not_discriminative", f"the trivial solution `{TRIVIAL[name]}` passes all "
                                                         f"{len(keep)} tests")
    if f"{d.id}/parent/0" in passed and all(passed[f"{d.id}/parent/{i}"] for i in keep):
        return Rejection("behaviour_unchanged", f"the parent's reference passes all {len(keep)} tests")
    meta = {**d.meta, "tests_verified": verified,
            "verification": {"tests_written": n, "tests_dropped": n - len(keep), **agreement}}
    return dataclasses.replace(d, tests=[d.tests[i] for i in keep], meta=meta)
