"""Evol-Instruct (WizardCoder, arXiv:2306.08568): make problems harder, round by round.

Two paths, one operator table (`OPERATORS`):

* Built-in tasks (evol/tasks.py) are evolved programmatically on their structured
  composition; the new reference and tests are recomputed from the new composition.
* Any other problem needs an LLM: pass `generate`, a plain callable `list[str] -> list[str]`
  (defined here so evol never imports align). The model rewrites the problem from the
  operator's prompt and writes a reference solution and tests (evol/llm_evolve.py).

Either way an evolved problem is kept only after its tests ran in the sandbox against its
reference, were discriminative, and (with `agreement_samples`) agreed with independently
sampled solutions (evol/verify.py). Operators: add_constraint, add_step, swap_requirement,
deepen (both paths), misdirection, complexity (LLM only); a user's own as "package.module:name"
resolving to an `Operator` or to a function `(Task, Random) -> Task | None`.

Every dropped evolution is recorded with a reason code of evol/reasons.py and a detail
(WizardLM's elimination step, arXiv:2304.12244); `EvolveResult.stats()` counts them per
round, operator and code.

Try it:  python -m evol.evolve --seeds 5 --rounds 2
"""
from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from evol import tasks as T
from evol.llm_evolve import LLM_OPERATORS, LLMOperator
from evol.reasons import Rejection, count_by
from rank.plugins import resolve, resolve_instance
from rank.records import Lineage, Problem, content_id

MAX_DEPTH = 5   # deeper compositions stop being "small function" tasks


class Generate(Protocol):
    """Text generation as evol needs it: a batch of prompts in, one completion per prompt out."""

    def __call__(self, prompts: list[str]) -> list[str]: ...


ApplyFn = Callable[[T.Task, random.Random], "T.Task | None"]


@dataclass(frozen=True)
class Operator:
    name: str
    apply: ApplyFn | None = None      # programmatic, on built-in tasks
    llm: LLMOperator | None = None    # LLM path: instruction for the evolving model


@dataclass
class EvolveResult:
    """`problems`: the seeds followed by every accepted evolution, in round order.
    `rejected`: one row per dropped evolution: parent, round, operator, code, detail (+ answer)."""
    problems: list[Problem]
    rejected: list[dict[str, Any]] = field(default_factory=list)

    @property
    def evolved(self) -> list[Problem]:
        return [p for p in self.problems if p.lineage.round > 0]

    def stats(self) -> dict:
        """Accepted per round and operator; rejected per round, operator and reason code."""
        return {"accepted": count_by(({"round": p.lineage.round, "operator": p.lineage.operator}
                                      for p in self.evolved), "round", "operator"),
                "rejected": count_by(self.rejected, "round", "operator", "code"),
                "rejected_by_code": count_by(self.rejected, "code")}


# ------------------------------------------------------------ programmatic operators

def _insert(task: T.Task, rng: random.Random, kinds: tuple[str, ...]) -> T.Task | None:
    used = set(task.names())
    names = [n for n in T.TRANSFORMS if T.PRIMITIVES[n].kind in kinds and n not in used]
    if not names:
        return None
    pos = rng.randint(0, task.depth)
    return T.Task(task.steps[:pos] + (T.sample_step(rng, names),) + task.steps[pos:])


def add_constraint(task: T.Task, rng: random.Random) -> T.Task | None:
    """Add a constraint: only some elements count (a new filter clause)."""
    return _insert(task, rng, ("filter",))


def add_step(task: T.Task, rng: random.Random) -> T.Task | None:
    """Add a reasoning step: one more transform of the elements or of their order."""
    return _insert(task, rng, ("map", "reorder"))


def swap_requirement(task: T.Task, rng: random.Random) -> T.Task | None:
    """Replace a commonly used requirement with a less common one of the same kind."""
    used = set(task.names())
    spots = [i for i, (n, _) in enumerate(task.steps) if T.PRIMITIVES[n].common]
    rng.shuffle(spots)
    for i in spots:
        kind = T.PRIMITIVES[task.steps[i][0]].kind
        rare = [p.name for p in T.PRIMITIVES.values() if p.kind == kind and not p.common and p.name not in used]
        if rare:
            return T.Task(task.steps[:i] + (T.sample_step(rng, rare),) + task.steps[i + 1:])
    return None


def deepen(task: T.Task, rng: random.Random) -> T.Task | None:
    """Raise complexity: transform the elements, then filter on the transformed values."""
    used = set(task.names())
    maps = [n for n in T.TRANSFORMS if T.PRIMITIVES[n].kind == "map" and n not in used]
    filters = [n for n in T.TRANSFORMS if T.PRIMITIVES[n].kind == "filter" and n not in used]
    if not maps or not filters:
        return None
    pos = rng.randint(0, task.depth)
    pair = (T.sample_step(rng, maps), T.sample_step(rng, filters))
    return T.Task(task.steps[:pos] + pair + task.steps[pos:])


def _builtin_operators() -> dict[str, Operator]:
    fns: dict[str, ApplyFn] = {"add_constraint": add_constraint, "add_step": add_step,
                               "swap_requirement": swap_requirement, "deepen": deepen}
    names = list(dict.fromkeys([*fns, *LLM_OPERATORS]))
    return {n: Operator(n, fns.get(n), LLM_OPERATORS.get(n)) for n in names}


OPERATORS: dict[str, Operator] = _builtin_operators()


def resolve_operator(name: str) -> Operator:
    """A built-in by name, or a user's 'package.module:name' (an Operator or an apply function)."""
    return resolve_instance(OPERATORS, name, "evolution operator", Operator, lambda n, fn: Operator(n, fn, None))


# ------------------------------------------------------------ the loop

def _task_error(e: T.TaskError) -> Rejection:
    return Rejection("tests_not_discriminative" if "not discriminative" in str(e) else "invalid_composition", str(e))


def _evolve_builtin(parent: Problem, task: T.Task, op: Operator, rng: random.Random,
                    rnd: int) -> Problem | Rejection:
    """The evolved problem (tests computed from its reference), or why it was dropped."""
    if op.apply is None:
        return Rejection("not_applicable", f"{op.name} has no programmatic form for built-in tasks")
    try:
        child = op.apply(task, rng)
    except T.TaskError as e:
        return _task_error(e)
    if child is None:
        return Rejection("not_applicable", "no free primitive of the kind this operator adds or swaps")
    if child.depth > MAX_DEPTH:
        return Rejection("too_deep", f"{child.depth} steps > {MAX_DEPTH}")
    split = T.split_of(child)
    if split != parent.meta.get("split", "train"):
        return Rejection("split_change", "would land in the held-out split" if split == "heldout"
                         else "would leave the held-out split")
    try:
        problem = T.render(child, Lineage(parent=parent.id, round=rnd, operator=op.name, source="tasks"))
    except T.TaskError as e:
        return _task_error(e)
    old = T.compile_reference(parent.reference or T.reference(task))
    new = T.compile_reference(problem.reference or "")
    if all(repr(old(list(xs))) == repr(new(list(xs))) for xs in problem.meta["inputs"]):
        return Rejection("behaviour_unchanged", "the new requirement is vacuous on every test input")
    problem.meta["evol"] = {"parent": parent.id, "round": rnd, "operator": op.name}
    return problem


def evolve(problems: list[Problem], rounds: int, operators: list[str] | None = None, seed: int = 0,
           generate: Generate | None = None, *, framing: str = "wizardcoder",
           run_tests: "Callable | None" = None, agreement_samples: int = 0) -> EvolveResult:
    """Evolve every problem of the previous round once per round, with an operator drawn per problem.

    Round 1 evolves the seeds; round r evolves the problems accepted in round r-1. Built-in
    tasks evolve programmatically; other problems go to `generate` (rejected if it is None).
    `run_tests(jobs) -> verdicts` executes the verification (default: the sandbox,
    rank.sandbox.run_jobs); `agreement_samples` solutions per LLM-evolved problem are sampled
    from `generate` for CodeT's agreement check.
    """
    from evol.llm_evolve import build_prompt, parse_answer, solve_prompt
    from evol.verify import sandbox_runner, verify
    from rank.extract import extract_code

    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    if agreement_samples < 0:
        raise ValueError(f"agreement_samples must be >= 0, got {agreement_samples}")
    names = list(operators) if operators is not None else list(OPERATORS)
    if not names:
        raise ValueError("operators is empty: give at least one operator name")
    ops = [resolve_operator(n) for n in names]
    build_prompt(Problem(id="-", prompt="-", entry_point="f"), "add_step", framing)   # unknown framing fails now
    run_tests = run_tests or sandbox_runner()
    rng = random.Random(content_id("evolve", seed, names))
    seen = {p.id for p in problems}
    result = EvolveResult(problems=list(problems))
    frontier = list(problems)
    for rnd in range(1, rounds + 1):
        accepted: list[Problem] = []
        drafts: list[tuple[Problem, Operator, Problem]] = []     # (parent, operator, draft)
        llm_jobs: list[tuple[Problem, Operator]] = []
        answers: dict[str, str] = {}

        def reject(parent: Problem, op: Operator, why: Rejection, answer: str | None = None) -> None:
            row = {"parent": parent.id, "round": rnd, "operator": op.name, "code": why.code,
                   "detail": why.detail, "reason": str(why)}
            if answer is not None:
                row["answer"] = answer[:2000]
            result.rejected.append(row)

        for parent in frontier:
            task = T.task_of(parent)
            usable = [o for o in ops if (o.apply if task is not None else o.llm) is not None]
            op = rng.choice(usable or ops)
            if task is not None:
                out = _evolve_builtin(parent, task, op, rng, rnd)
                if isinstance(out, Rejection):
                    reject(parent, op, out)
                else:
                    drafts.append((parent, op, out))
            elif generate is None:
                reject(parent, op, Rejection("no_generator", "not a built-in task and no generate callable given"))
            elif op.llm is None:
                reject(parent, op, Rejection("not_applicable", f"{op.name} has no LLM instruction"))
            else:
                llm_jobs.append((parent, op))
        if llm_jobs:
            texts = generate([build_prompt(p, op.name, framing) for p, op in llm_jobs])
            if len(texts) != len(llm_jobs):
                raise ValueError(f"generate returned {len(texts)} answers for {len(llm_jobs)} prompts")
            for (parent, op), text in zip(llm_jobs, texts):
                out = parse_answer(text, parent, op.name, rnd)
                if isinstance(out, Rejection):
                    reject(parent, op, out, text)
                else:
                    answers[out.id] = text
                    drafts.append((parent, op, out))
        samples: dict[str, list[str]] = {}
        llm_drafts = [d for _, _, d in drafts if d.id in answers]
        if agreement_samples and llm_drafts:
            sampled = generate([solve_prompt(d) for d in llm_drafts for _ in range(agreement_samples)])
            for i, d in enumerate(llm_drafts):
                chunk = sampled[i * agreement_samples:(i + 1) * agreement_samples]
                samples[d.id] = [extract_code(t, d.entry_point) for t in chunk]
        checked = verify([d for _, _, d in drafts], [p for p, _, _ in drafts], run_tests,
                         changes_behaviour=[op.llm.changes_behaviour if d.id in answers and op.llm else False
                                            for _, op, d in drafts], samples=samples)
        for (parent, op, draft), out in zip(drafts, checked):
            if isinstance(out, Problem) and out.id in seen:
                out = Rejection("duplicate", f"problem {out.id} exists already")
            if isinstance(out, Rejection):
                reject(parent, op, out, answers.get(draft.id))
                continue
            seen.add(out.id)
            accepted.append(out)
        result.problems.extend(accepted)
        frontier = accepted
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Evolve built-in tasks and print what happened.")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--operators", nargs="*", default=None)
    args = ap.parse_args(argv)
    res = evolve(T.generate_problems(args.seeds, seed=args.seed), args.rounds, args.operators, args.seed)
    for p in res.evolved:
        print(f"# round {p.lineage.round} {p.lineage.operator} from {p.lineage.parent}\n{p.prompt}\n{p.reference}")
    for r in res.rejected:
        print(f"# rejected round {r['round']} {r['operator']} from {r['parent']}: {r['reason']}")
    print(res.stats())


if __name__ == "__main__":
    main()
