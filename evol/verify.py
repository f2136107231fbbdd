"""Tests you can trust: verify model-written tests by running them in the sandbox.

    out = verify(drafts, parents, run_tests, samples={draft_id: [code, ...]})   # Problem | Rejection each

A draft (a Problem whose reference and tests a model wrote) is kept only when, executed in
the sandbox (each program once against all tests; `Verdict.outcomes` says which passed):
1. its reference passes the tests: tests the reference fails are dropped one by one while at
   least MIN_TESTS remain and the reference passes most of them, else `reference_fails`;
2. the tests are discriminative: every trivial solution (TRIVIAL) fails one, else
   `tests_not_discriminative`; and, for operators that change behaviour, the parent's
   reference fails one, else `behaviour_unchanged`;
3. when independently sampled solutions are given, the tests agree with their majority
   behaviour: CodeT's dual agreement (arXiv:2207.10397, `rank.strategies.codet`) groups the
   samples by which tests they pass and picks the group with the largest samples x tests.
   Tests outside that group's passes are dropped while enough remain, else `agreement_failed`.
`meta["tests_verified"]` says how a kept problem was verified: "reference" or "agreement".
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from evol.reasons import Rejection
from rank.records import Problem, ScoredResponse, Verdict
from rank.sandbox import Job, job_for
from rank.strategies import codet, pass_vector

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


def sandbox_runner(config=None) -> RunTests:
    """`run_tests` backed by rank.sandbox.run_jobs (one pool per call)."""
    from rank.sandbox import run_jobs

    return lambda jobs: run_jobs(jobs, config)


def _passes(v: Verdict, n: int) -> list[bool]:
    """Per test, whether it passed (tests never reached did not)."""
    got = [o == "pass" for o in v.outcomes[:n]]
    return got + [False] * (n - len(got))


def _consensus(vectors: list[list[bool]]) -> tuple[list[bool], int]:
    """CodeT's winning pass vector among sampled solutions, and the size of its consensus set."""
    responses = [ScoredResponse(candidate_id=str(i), model="sample", role="teacher", code="", score=0.0,
                                status="passed" if all(v) else "partial", passed=sum(v), total=len(v),
                                outcomes=["pass" if ok else "fail" for ok in v]) for i, v in enumerate(vectors)]
    best = list(pass_vector(codet("-", "", responses).responses[0])) if len(responses) > 1 else vectors[0]
    return best, sum(v == best for v in vectors)


def verify(drafts: Sequence[Problem], parents: Sequence[Problem | None], run_tests: RunTests,
           changes_behaviour: Sequence[bool] | None = None,
           samples: dict[str, list[str]] | None = None, min_tests: int = MIN_TESTS) -> list[Problem | Rejection]:
    """Verify each draft's tests by execution (one batched sandbox call); see the module docstring."""
    if changes_behaviour is None:
        changes_behaviour = [True] * len(drafts)
    samples = samples or {}
    jobs: list[Job] = []
    for d, parent, changes in zip(drafts, parents, changes_behaviour):
        if not d.reference or not d.tests:
            raise ValueError(f"draft {d.id} needs a reference solution and test snippets to verify")
        jobs.append(job_for(d, d.reference, f"{d.id}/ref"))
        jobs += [job_for(d, trivial_code(d.entry_point, body), f"{d.id}/trivial/{name}") for name, body in TRIVIAL.items()]
        if changes and parent is not None and parent.reference:
            jobs.append(job_for(d, parent.reference, f"{d.id}/parent"))
        jobs += [job_for(d, code, f"{d.id}/sample/{s}") for s, code in enumerate(samples.get(d.id, []))]
    verdicts = {v.candidate_id: v for v in run_tests(jobs)} if jobs else {}
    return [_decide(d, verdicts, len(samples.get(d.id, [])), min_tests) for d in drafts]


def _decide(d: Problem, verdicts: dict[str, Verdict], n_samples: int, min_tests: int) -> Problem | Rejection:
    n = len(d.tests)
    ok = {jid: _passes(v, n) for jid, v in verdicts.items() if jid.startswith(f"{d.id}/")}
    keep = [i for i in range(n) if ok[f"{d.id}/ref"][i]]
    if len(keep) < min_tests or len(keep) * 2 <= n:
        return Rejection("reference_fails", f"the reference passes {len(keep)} of {n} tests "
                                            f"(needs {min_tests} and a majority)"
                         + (f"; {verdicts[f'{d.id}/ref'].error[:200]}" if verdicts[f"{d.id}/ref"].error else ""))
    verified = "reference"
    agreement: dict = {"samples": n_samples}
    if n_samples:
        vectors = [[ok[f"{d.id}/sample/{s}"][i] for i in keep] for s in range(n_samples)]
        best, size = _consensus(vectors)
        agreement.update(consensus_size=size, consensus_tests=sum(best))
        if any(best):   # with no sample passing any test there is no majority behaviour to agree with
            agreed = [i for i, yes in zip(keep, best) if yes]
            if len(agreed) < min_tests:
                return Rejection("agreement_failed", f"the largest agreeing group ({size} of {n_samples} "
                                                     f"samples) passes only {len(agreed)} of {len(keep)} tests")
            keep, verified = agreed, "agreement"
    for name in TRIVIAL:
        if all(ok[f"{d.id}/trivial/{name}"][i] for i in keep):
            return Rejection("tests_not_discriminative", f"the trivial solution `{TRIVIAL[name]}` passes all "
                                                         f"{len(keep)} tests")
    if f"{d.id}/parent" in ok and all(ok[f"{d.id}/parent"][i] for i in keep):
        return Rejection("behaviour_unchanged", f"the parent's reference passes all {len(keep)} tests")
    meta = {**d.meta, "tests_verified": verified,
            "verification": {"tests_written": n, "tests_dropped": n - len(keep), **agreement}}
    return dataclasses.replace(d, tests=[d.tests[i] for i in keep], meta=meta)
