"""The LLM path of Evol-Instruct (WizardCoder, arXiv:2306.08568) for problems that are not built-in tasks.

Each operator has a prompt template (our own wording of the paper's idea). The model must
answer in a fixed layout: the rewritten problem (spec and signature) under `### Problem`,
and assert-style tests under `### Tests`. We cannot check those tests against a trusted
reference here (running model-written code belongs in the sandbox, rank/), so we keep it
simple and honest: an answer without at least `MIN_LLM_TESTS` syntactically valid asserts
that call the entry point is rejected, and accepted problems carry
`meta["tests_verified"] = False` and no reference.
"""
from __future__ import annotations

import ast
import re
from typing import TYPE_CHECKING, Callable

from rank.records import Lineage, Problem

if TYPE_CHECKING:  # only for annotations: evol.evolve imports this module
    from evol.evolve import Operator

MIN_LLM_TESTS = 3

_LAYOUT = """
Answer in exactly this layout and nothing else:
### Problem
<the rewritten problem statement, ending with the Python function signature `def {entry_point}(...):`>
### Tests
<at least {min_tests} independent lines, each `assert {entry_point}(...) == <expected>`>
"""

_HEAD = "You rewrite programming problems to make them a little harder.\n\n#Given problem#\n{problem}\n\n"

TEMPLATES: dict[str, str] = {
    "add_constraint": _HEAD + (
        "#Instruction#\nAdd one new constraint or requirement that the solution must respect "
        "(for example, which inputs count or what must be excluded). Keep the function name "
        "`{entry_point}` and keep the problem solvable in a few lines.\n") + _LAYOUT,
    "add_step": _HEAD + (
        "#Instruction#\nThe problem can be solved in a few logical steps. Add one more reasoning "
        "step that the solution must carry out. Keep the function name `{entry_point}`.\n") + _LAYOUT,
    "swap_requirement": _HEAD + (
        "#Instruction#\nReplace one common, well-known requirement of the problem with a less "
        "common and more specific one. Keep the function name `{entry_point}`.\n") + _LAYOUT,
    "deepen": _HEAD + (
        "#Instruction#\nMake the problem deeper: the solution should first transform the data "
        "and then reason about the transformed values. Keep the function name `{entry_point}`.\n") + _LAYOUT,
}


def build_prompt(problem: Problem, op: "Operator") -> str:
    return (op.template or "").format(problem=problem.prompt.strip(), entry_point=problem.entry_point,
                                      min_tests=MIN_LLM_TESTS)


def _valid_test(line: str, entry_point: str) -> bool:
    try:
        tree = ast.parse(line)
    except SyntaxError:
        return False
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == entry_point]
    return len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert) and bool(calls)


def parse_answer(text: str, entry_point: str) -> tuple[str, list[str]] | str:
    """(prompt, tests) from a model answer, or the reason it is unusable."""
    m = re.search(r"###\s*Problem\s*\n(.*?)\n###\s*Tests\s*\n(.*)", text, re.S)
    if not m:
        return "LLM output does not follow the layout (### Problem / ### Tests)"
    prompt, tests_text = m.group(1).strip(), m.group(2)
    if not re.search(rf"def\s+{re.escape(entry_point)}\s*\(", prompt):
        return f"LLM output lost the signature def {entry_point}(...)"
    tests = [ln.strip() for ln in tests_text.splitlines() if ln.strip().startswith("assert")]
    tests = list(dict.fromkeys(t for t in tests if _valid_test(t, entry_point)))
    if len(tests) < MIN_LLM_TESTS:
        return f"LLM output has {len(tests)} usable tests (< {MIN_LLM_TESTS})"
    return prompt, tests


def evolve_with_llm(jobs: list[tuple[Problem, "Operator"]], generate: Callable[[list[str]], list[str]],
                    rnd: int) -> list[Problem | str]:
    """One batched `generate` call for all jobs; each result is a Problem or a rejection reason."""
    answers = generate([build_prompt(p, op) for p, op in jobs])
    if len(answers) != len(jobs):
        raise ValueError(f"generate returned {len(answers)} answers for {len(jobs)} prompts")
    out: list[Problem | str] = []
    for (parent, op), answer in zip(jobs, answers):
        parsed = parse_answer(answer, parent.entry_point)
        if isinstance(parsed, str):
            out.append(parsed)
            continue
        prompt, tests = parsed
        out.append(Problem(
            id=Problem.make_id(prompt, parent.entry_point), prompt=prompt, entry_point=parent.entry_point,
            tests=tests, reference=None,
            lineage=Lineage(parent=parent.id, round=rnd, operator=op.name, source=parent.lineage.source),
            meta={"tests_verified": False, "evol": {"parent": parent.id, "round": rnd, "operator": op.name}},
        ))
    return out
