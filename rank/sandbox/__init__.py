"""Run untrusted candidate programs against unit tests and return honest verdicts (docs/sandbox.md).

    from rank.sandbox import Sandbox, SandboxConfig, job_for, run_jobs
    with Sandbox(SandboxConfig(workers=2, timeout_s=5.0)) as sb:
        verdicts = sb.run([job_for(problem, code, "c1")])   # list[rank.records.Verdict]

`job_for` is the one place that builds a sandbox Job from a rank.records.Problem. The subpackage:
host (the pool of workers, run on the harness side), and the in-sandbox server's modules: wire (framing
and the plain-data codec), plan (test planning), tester (running tests), server (fork-server, clean-up),
seccomp (the syscall filter), runners (the interpreter per language). CLI: python -m rank.execute.
"""
from __future__ import annotations

from rank.records import Problem
from rank.sandbox.host import (Job, Sandbox, SandboxConfig, SandboxUnavailable, run_jobs,
                               verdict_from_report)

__all__ = ["Job", "Sandbox", "SandboxConfig", "SandboxUnavailable", "job_for", "run_jobs",
           "verdict_from_report"]


def job_for(problem: Problem, code: str, job_id: str) -> Job:
    """The sandbox job that runs `code` (a whole program) against `problem`'s tests: its snippets, or
    its HumanEval-style `check(candidate)`. The function under test is `problem.entry_point`; the
    problem's prompt says which other names the tests may take from the program (docs/sandbox.md)."""
    if problem.tests:
        return Job(id=job_id, code=code, tests=problem.tests, entry_point=problem.entry_point or None,
                   prompt=problem.prompt or None)
    return Job(id=job_id, code=code, test=problem.test, entry_point=problem.entry_point, prompt=problem.prompt or None)
