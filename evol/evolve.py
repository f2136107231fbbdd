"""Evol-Instruct (WizardCoder, arXiv:2306.08568): make problems harder, round by round.

Two paths, one operator table:

* Built-in tasks (evol/tasks.py) are evolved programmatically on their structured
  composition; the new reference and tests are recomputed from the new composition, so an
  evolved task is as trustworthy as a seed.
* Any other problem needs an LLM: pass `generate`, a plain callable `list[str] -> list[str]`
  (defined here so evol never imports align). The model rewrites the problem from the
  operator's template and must also write tests; see evol/llm_evolve.py.

Operators (`OPERATORS`): add_constraint, add_step, swap_requirement, deepen; a user's own
as "package.module:name" resolving to an `Operator` or to a function `(Task, Random) -> Task | None`.

Failed evolutions are dropped with a recorded reason (WizardLM's elimination step): operator
not applicable, too deep, would land in the held-out split (or leave the parent's split),
reference raises or tests not discriminative, behaviour unchanged, duplicate of a problem
already present, LLM output without tests.

Try it:  python -m evol.evolve --seeds 5 --rounds 2
"""
from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from evol import tasks as T
from rank.plugins import resolve_instance
from rank.records import Lineage, Problem, content_id

MAX_DEPTH = 5   # deeper compositions stop being "small function" tasks


class Generate(Protocol):
    """Text generation as evol needs it: a batch of prompts in, one completion per prompt out."""

    def __call__(self, prompts: list[str]) -> list[str]: ...


ApplyFn = Callable[[T.Task, random.Random], "T.Task | None"]


@dataclass(frozen=True)
class Operator:
    name: str
    apply: ApplyFn | None = None   # programmatic, on built-in tasks
    template: str | None = None    # LLM path: str.format(problem=..., entry_point=...)


@dataclass
class EvolveResult:
    """`problems`: the seeds followed by every accepted evolution, in round order."""
    problems: list[Problem]
    rejected: list[dict[str, Any]] = field(default_factory=list)

    @property
    def evolved(self) -> list[Problem]:
        return [p for p in self.problems if p.lineage.round > 0]


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
    from evol.llm_evolve import TEMPLATES   # the LLM path's prompts, one per operator
    fns = {"add_constraint": add_constraint, "add_step": add_step,
           "swap_requirement": swap_requirement, "deepen": deepen}
    return {name: Operator(name, fn, TEMPLATES[name]) for name, fn in fns.items()}


OPERATORS: dict[str, Operator] = _builtin_operators()


def resolve_operator(name: str) -> Operator:
    """A built-in by name, or a user's 'package.module:name' (an Operator or an apply function)."""
    return resolve_instance(OPERATORS, name, "evolution operator", Operator, lambda n, fn: Operator(n, fn, None))


# ------------------------------------------------------------ the loop

def _evolve_builtin(parent: Problem, task: T.Task, op: Operator, rng: random.Random,
                    rnd: int) -> Problem | str:
    """The evolved problem, or the reason it was dropped."""
    if op.apply is None:
        return "operator has no programmatic form"
    try:
        child = op.apply(task, rng)
    except T.TaskError as e:
        return f"invalid composition: {e}"
    if child is None:
        return "operator not applicable"
    if child.depth > MAX_DEPTH:
        return f"too deep ({child.depth} > {MAX_DEPTH})"
    split = T.split_of(child)
    if split != parent.meta.get("split", "train"):
        return "would land in the held-out split" if split == "heldout" else "would leave the held-out split"
    try:
        problem = T.render(child, Lineage(parent=parent.id, round=rnd, operator=op.name, source="tasks"))
    except T.TaskError as e:
        return str(e)
    old = T.compile_reference(parent.reference or T.reference(task))
    new = T.compile_reference(problem.reference or "")
    if all(repr(old(list(xs))) == repr(new(list(xs))) for xs in problem.meta["inputs"]):
        return "behaviour unchanged (the new requirement is vacuous)"
    problem.meta["evol"] = {"parent": parent.id, "round": rnd, "operator": op.name}
    return problem


def evolve(problems: list[Problem], rounds: int, operators: list[str] | None = None, seed: int = 0,
           generate: Generate | None = None) -> EvolveResult:
    """Evolve every problem of the previous round once per round, with an operator drawn per problem.

    Round 1 evolves the seeds; round r evolves the problems accepted in round r-1. Built-in
    tasks evolve programmatically; other problems go to `generate` (rejected if it is None).
    """
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    names = list(operators) if operators is not None else list(OPERATORS)
    if not names:
        raise ValueError("operators is empty: give at least one operator name")
    ops = [resolve_operator(n) for n in names]
    rng = random.Random(content_id("evolve", seed, names))
    seen = {p.id for p in problems}
    result = EvolveResult(problems=list(problems))
    frontier = list(problems)
    for rnd in range(1, rounds + 1):
        accepted: list[Problem] = []
        llm_jobs: list[tuple[Problem, Operator]] = []

        def record(parent: Problem, op: Operator, out: Problem | str) -> None:
            if isinstance(out, Problem) and out.id in seen:
                out = "duplicate of an existing problem"
            if isinstance(out, str):
                result.rejected.append({"parent": parent.id, "round": rnd, "operator": op.name, "reason": out})
                return
            seen.add(out.id)
            accepted.append(out)

        for parent in frontier:
            op = rng.choice(ops)
            task = T.task_of(parent)
            if task is not None:
                record(parent, op, _evolve_builtin(parent, task, op, rng, rnd))
            elif generate is None:
                record(parent, op, "not a built-in task and no generate callable given")
            elif op.template is None:
                record(parent, op, "operator has no LLM template")
            else:
                llm_jobs.append((parent, op))
        if llm_jobs:
            from evol.llm_evolve import evolve_with_llm
            for (parent, op), out in zip(llm_jobs, evolve_with_llm(llm_jobs, generate, rnd)):
                record(parent, op, out)
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


if __name__ == "__main__":
    main()
