"""The built-in task family: small Python list functions composed from a table of primitives.

This is the data behind the embedded CPU default (`--base tiny`, docs/design.md §10). A task is a
pipeline of list transforms ending in one terminal step, and every clause of the spec maps to
exactly one line of canonical code, so a tiny transformer can learn the mapping in minutes:

    Keep the even numbers, multiply each by 3, then return the sum.
    def f(xs):
    ->
    def f(xs):
        xs = [x for x in xs if x % 2 == 0]
        xs = [x * 3 for x in xs]
        return sum(xs)

Difficulty is the composition depth (number of transform clauses before the terminal).
Tests are `assert f(...) == expected` snippets; expected values come from running the
reference (our own trusted code, executed in-process).

Held-out rule (disjoint by construction): a task's *primitive set* is the sorted set of
primitive names it uses, constants and order ignored (e.g. {even, mul, sum}). A task is
held-out iff sha256 of that set falls in bucket 0 of `HELDOUT_BUCKETS`. So every held-out
task is an unseen combination of primitives that are all seen in training, and no reordering
or change of constants of a held-out task can ever be a training task.

Try it:  python -m evol.tasks 5 --split heldout
"""
from __future__ import annotations

import argparse
import hashlib
import random
from dataclasses import dataclass
from typing import Any

from rank.records import Lineage, Problem, content_id

ENTRY_POINT = "f"
SIGNATURE = f"def {ENTRY_POINT}(xs):"
HELDOUT_BUCKETS = 5          # 1 in 5 primitive sets is held out
N_TESTS = 6                  # tests per task (>= 5, docs/design.md §10)
MIN_DISTINCT_OUTPUTS = 3     # tests must tell apart more than a constant function
SPLITS = ("train", "heldout")
FAMILY = "listfn/v1"


class TaskError(ValueError):
    """A composition that does not make a usable task (reference raises, tests not discriminative)."""


@dataclass(frozen=True)
class Primitive:
    name: str
    kind: str                 # "filter" | "map" | "reorder" | "terminal"
    clause: str               # spec clause; "{k}" is the constant
    code: str                 # the one line of code; "{k}" is the constant
    consts: tuple[int, ...] = ()
    common: bool = True       # common requirements are sampled more; evolution swaps them for rare ones


def _filter(name, clause, cond, consts=(), common=True):
    return Primitive(name, "filter", clause, f"xs = [x for x in xs if {cond}]", consts, common)


def _map(name, clause, expr, consts=(), common=True):
    return Primitive(name, "map", clause, f"xs = [{expr} for x in xs]", consts, common)


_PRIMITIVES = [
    _filter("even", "keep the even numbers", "x % 2 == 0"),
    _filter("odd", "keep the odd numbers", "x % 2 == 1"),
    _filter("pos", "keep the positive numbers", "x > 0"),
    _filter("neg", "keep the negative numbers", "x < 0", common=False),
    _filter("gt", "keep the numbers greater than {k}", "x > {k}", tuple(range(1, 7))),
    _filter("lt", "keep the numbers less than {k}", "x < {k}", tuple(range(1, 7))),
    _filter("mult", "keep the multiples of {k}", "x % {k} == 0", (3, 4, 5), common=False),
    _filter("nonmult", "drop the multiples of {k}", "x % {k} != 0", (2, 3, 4, 5), common=False),
    _filter("nonzero", "drop the zeros", "x != 0", common=False),
    _map("mul", "multiply each by {k}", "x * {k}", (2, 3, 4, 5)),
    _map("add", "add {k} to each", "x + {k}", tuple(range(1, 10))),
    _map("sub", "subtract {k} from each", "x - {k}", tuple(range(1, 10))),
    _map("square", "square each", "x * x"),
    _map("negate", "negate each", "-x", common=False),
    _map("abs", "take the absolute value of each", "abs(x)", common=False),
    _map("mod", "take each modulo {k}", "x % {k}", (2, 3, 4, 5), common=False),
    _map("div", "integer-divide each by {k}", "x // {k}", (2, 3, 4, 5), common=False),
    Primitive("rev", "reorder", "reverse the list", "xs = xs[::-1]"),
    Primitive("sort", "reorder", "sort the list", "xs = sorted(xs)"),
    Primitive("sortdesc", "reorder", "sort the list in descending order", "xs = sorted(xs, reverse=True)",
              common=False),
    Primitive("head", "reorder", "keep the first {k} elements", "xs = xs[:{k}]", (2, 3, 4), common=False),
    Primitive("tail", "reorder", "drop the first element", "xs = xs[1:]", common=False),
    Primitive("sum", "terminal", "return the sum", "return sum(xs)"),
    Primitive("len", "terminal", "return the count", "return len(xs)"),
    Primitive("max", "terminal", "return the largest, or 0 if there is none", "return max(xs, default=0)"),
    Primitive("min", "terminal", "return the smallest, or 0 if there is none", "return min(xs, default=0)",
              common=False),
    Primitive("first", "terminal", "return the first one, or 0 if there is none", "return xs[0] if xs else 0",
              common=False),
    Primitive("last", "terminal", "return the last one, or 0 if there is none", "return xs[-1] if xs else 0",
              common=False),
    Primitive("list", "terminal", "return the list", "return xs"),
]
PRIMITIVES: dict[str, Primitive] = {p.name: p for p in _PRIMITIVES}
TRANSFORMS = [p.name for p in _PRIMITIVES if p.kind != "terminal"]
TERMINALS = [p.name for p in _PRIMITIVES if p.kind == "terminal"]

Step = tuple[str, "int | None"]   # (primitive name, constant or None)


@dataclass(frozen=True)
class Task:
    """A composition: transform steps, then one terminal step. No primitive is used twice."""
    steps: tuple[Step, ...]

    def __post_init__(self) -> None:
        if not self.steps:
            raise TaskError("a task needs at least a terminal step")
        names = [n for n, _ in self.steps]
        for i, (name, k) in enumerate(self.steps):
            p = PRIMITIVES.get(name)
            if p is None:
                raise TaskError(f"unknown primitive {name!r}")
            if (p.kind == "terminal") != (i == len(self.steps) - 1):
                raise TaskError(f"the terminal step must come last and only last, got {names}")
            if (k is None) != (not p.consts) or (k is not None and k not in p.consts):
                raise TaskError(f"primitive {name!r} takes a constant from {p.consts}, got {k!r}")
        if len(set(names)) != len(names):
            raise TaskError(f"a primitive is used twice: {names}")

    @property
    def depth(self) -> int:
        return len(self.steps) - 1

    @property
    def primitive_set(self) -> str:
        """The held-out key: primitive names, sorted, constants and order ignored."""
        return "+".join(sorted(n for n, _ in self.steps))

    def names(self) -> list[str]:
        return [n for n, _ in self.steps]


def split_of(task: Task) -> str:
    digest = hashlib.sha256(task.primitive_set.encode()).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") % HELDOUT_BUCKETS == 0 else "train"


def spec(task: Task) -> str:
    clauses = [PRIMITIVES[n].clause.format(k=k) for n, k in task.steps]
    text = ", ".join(clauses[:-1]) + ", then " + clauses[-1] if len(clauses) > 1 else clauses[0]
    return text[0].upper() + text[1:] + "."


def reference(task: Task) -> str:
    lines = [SIGNATURE] + ["    " + PRIMITIVES[n].code.format(k=k) for n, k in task.steps]
    return "\n".join(lines) + "\n"


def prompt(task: Task) -> str:
    return f"{spec(task)}\n{SIGNATURE}"


def compile_reference(code: str):
    """Exec our own reference code (trusted, generated from the table) and return the function."""
    scope: dict[str, Any] = {}
    exec(compile(code, "<task reference>", "exec"), scope)  # noqa: S102 - trusted, built from the table
    return scope[ENTRY_POINT]


def _inputs(task: Task) -> list[list[int]]:
    """Test inputs, seeded by the task content so a task always gets the same tests."""
    rng = random.Random(content_id("inputs", FAMILY, task.steps))
    out: list[list[int]] = [[]] if rng.random() < 0.3 else []
    seen = {repr(x) for x in out}
    while len(out) < 3 * N_TESTS:
        xs = [rng.randint(-9, 9) for _ in range(rng.randint(1, 8))]
        if repr(xs) not in seen:
            seen.add(repr(xs))
            out.append(xs)
    return out


def make_tests(task: Task) -> tuple[list[str], list[list[int]]]:
    """`N_TESTS` assert snippets whose expected values come from the reference; raises TaskError."""
    fn = compile_reference(reference(task))
    chosen: list[tuple[list[int], Any]] = []
    outputs: set[str] = set()
    try:
        pool = [(xs, fn(list(xs))) for xs in _inputs(task)]
    except Exception as e:  # our table should never do this; report the task, not a traceback
        raise TaskError(f"reference raises on {task.names()}: {e!r}") from None
    # Prefer inputs with new outputs first, so the tests tell apart wrong programs.
    for xs, y in pool:
        if repr(y) not in outputs and len(chosen) < N_TESTS:
            outputs.add(repr(y))
            chosen.append((xs, y))
    for xs, y in pool:
        if len(chosen) >= N_TESTS:
            break
        if all(xs is not c for c, _ in chosen):
            chosen.append((xs, y))
    if len(outputs) < MIN_DISTINCT_OUTPUTS:
        raise TaskError(f"tests not discriminative for {task.names()}: only {len(outputs)} distinct outputs")
    tests = [f"assert {ENTRY_POINT}({xs!r}) == {y!r}" for xs, y in chosen]
    return tests, [xs for xs, _ in chosen]


def render(task: Task, lineage: Lineage | None = None) -> Problem:
    """The Problem record of a task; raises TaskError if the task is not usable."""
    tests, inputs = make_tests(task)
    text = prompt(task)
    return Problem(
        id=Problem.make_id(text, ENTRY_POINT), prompt=text, entry_point=ENTRY_POINT, tests=tests,
        reference=reference(task), lineage=lineage or Lineage(source="tasks"),
        meta={"family": FAMILY, "steps": [list(s) for s in task.steps], "depth": task.depth,
              "split": split_of(task), "primitive_set": task.primitive_set, "inputs": inputs},
    )


def task_of(problem: Problem) -> Task | None:
    """The structured task behind a built-in problem, or None for any other problem."""
    if problem.meta.get("family") != FAMILY or "steps" not in problem.meta:
        return None
    try:
        return Task(tuple((n, k) for n, k in problem.meta["steps"]))
    except (TaskError, TypeError, ValueError):
        return None


def _weight(name: str) -> int:
    return 3 if PRIMITIVES[name].common else 1


def sample_step(rng: random.Random, names: list[str]) -> Step:
    name = rng.choices(names, weights=[_weight(n) for n in names])[0]
    consts = PRIMITIVES[name].consts
    return name, (rng.choice(consts) if consts else None)


def sample_task(rng: random.Random, depth: int) -> Task:
    steps: list[Step] = []
    while len(steps) < depth:
        step = sample_step(rng, [n for n in TRANSFORMS if n not in {s for s, _ in steps}])
        steps.append(step)
    steps.append(sample_step(rng, TERMINALS))
    return Task(tuple(steps))


def generate_problems(n: int, split: str = "train", seed: int = 0, min_depth: int = 1,
                      max_depth: int = 3) -> list[Problem]:
    """`n` distinct problems of `split`, depths uniform in [min_depth, max_depth]; deterministic per seed."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 1 <= min_depth <= max_depth <= len(TRANSFORMS):
        raise ValueError(f"need 1 <= min_depth <= max_depth <= {len(TRANSFORMS)}, got {min_depth}, {max_depth}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(content_id("generate", FAMILY, split, seed))
    out: dict[str, Problem] = {}
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"could only make {len(out)} of {n} distinct {split} problems "
                             f"with depth {min_depth}..{max_depth}")
        task = sample_task(rng, rng.randint(min_depth, max_depth))
        if split_of(task) != split:
            continue
        try:
            p = render(task)
        except TaskError:
            continue
        out.setdefault(p.id, p)
    return list(out.values())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Print built-in tasks.")
    ap.add_argument("n", type=int, nargs="?", default=3)
    ap.add_argument("--split", default="train", choices=SPLITS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-depth", type=int, default=3)
    args = ap.parse_args(argv)
    for p in generate_problems(args.n, args.split, args.seed, max_depth=args.max_depth):
        print(f"# {p.id} depth={p.meta['depth']} split={p.meta['split']}\n{p.prompt}\n{p.reference}"
              + "\n".join(p.tests) + "\n")


if __name__ == "__main__":
    main()
