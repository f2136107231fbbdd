"""The LLM path of Evol-Instruct: prompts per operator, the answer layout, and WizardLM's eliminations.

    prompt = build_prompt(problem, "misdirection", framing="contest")
    draft = parse_answer(model_text, parent, op, round)     # a Problem draft, or a Rejection

Operators are WizardCoder's five (arXiv:2306.08568 §3.1), each with an instruction in our own
words, plus `deepen` (transform first, then reason on the transformed values). Two framings
wrap them: `wizardcoder` (rewrite the problem to be a bit harder) and `contest`, the
contest-designer framing of PanGu-Coder2 (arXiv:2307.14936 §3.2).

The model must answer in one fixed layout: the new problem (statement ending with the
signature), a reference solution, and assert tests. A draft is only a claim: evol/verify.py
runs the reference against the tests in the sandbox before anything is kept.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from evol.dedup import words
from evol.reasons import Rejection
from rank.extract import extract_code
from evol.verify import MIN_TESTS
from rank.records import Lineage, Problem

MIN_WORDS = 12       # an answer shorter than this cannot hold problem + solution + tests


@dataclass(frozen=True)
class LLMOperator:
    instruction: str          # what to change, our wording of the paper's method
    changes_behaviour: bool   # False: the parent's reference may still pass (e.g. same I/O, faster)


LLM_OPERATORS: dict[str, LLMOperator] = {
    "add_constraint": LLMOperator(
        "Add one new constraint or requirement the function must respect, for example which "
        "inputs count, which must be excluded, or how ties are broken.", True),
    "swap_requirement": LLMOperator(
        "Find a requirement of the problem that is common and well known, and replace it with a "
        "rarer, more specific one of the same kind.", True),
    "add_step": LLMOperator(
        "The problem is solved in a few logical steps; add one more reasoning step the function "
        "must carry out before it returns.", True),
    "misdirection": LLMOperator(
        "Keep the task, but add to the statement a short piece of plausible but wrong code as a "
        "'reference attempt', and say that it is wrong; the solution must not repeat its mistake.", False),
    "complexity": LLMOperator(
        "Ask for a solution with a stated, tighter bound on time or space (for example O(n log n) "
        "time or O(1) extra space), and make the inputs large enough that a naive approach is slow.", False),
    "deepen": LLMOperator(
        "Make the function first transform the data and then reason about the transformed "
        "values, so one more idea is needed.", True),
}

FRAMINGS: dict[str, str] = {
    "wizardcoder": "You make programming problems a little harder, one change at a time.",
    "contest": ("You are the designer of a programming contest. From the problem below, design a new "
                "contest problem that tests a deeper skill, with a precise statement and examples."),
}

_PROMPT = """{head}

Original problem:
{problem}

Change to make: {instruction}
The function must still be called `{entry_point}`.

Reply with exactly three sections, in this order, and nothing else:
### Problem
(the new statement; its last line is the signature `def {entry_point}(...):`)
### Solution
```python
(a correct reference implementation of {entry_point})
```
### Tests
(at least {min_tests} lines, each one `assert {entry_point}(...) == ...` with the exact expected value)
"""

# Words only the prompt contains: an answer repeating them copied the template (WizardLM's fourth rule).
_TEMPLATE_MARKERS = ("original problem:", "change to make:", "reply with exactly three sections",
                     "(the new statement; its last line", "(a correct reference implementation of",
                     "lines, each one `assert")
_REFUSAL = re.compile(r"\b(i'?m sorry|i am sorry|i apologi[sz]e|as an ai\b|i can(?:not|'t) (?:help|assist|do|"
                      r"provide|comply|create)|unable to (?:help|assist|comply))", re.I)
_SECTIONS = re.compile(r"###\s*Problem\s*\n(?P<problem>.*?)\n###\s*Solution\s*\n(?P<solution>.*?)"
                       r"\n###\s*Tests\s*\n(?P<tests>.*)", re.S)


def get_operator(name: str) -> LLMOperator | None:
    return LLM_OPERATORS.get(name)


def build_prompt(problem: Problem, operator: str, framing: str = "wizardcoder") -> str:
    """The evolution prompt for one parent problem and one operator (a key of LLM_OPERATORS)."""
    if framing not in FRAMINGS:
        raise ValueError(f"unknown evolution framing {framing!r}; known: {', '.join(FRAMINGS)}")
    return _PROMPT.format(head=FRAMINGS[framing], problem=problem.prompt.strip(),
                          instruction=LLM_OPERATORS[operator].instruction,
                          entry_point=problem.entry_point, min_tests=MIN_TESTS)


def solve_prompt(problem: Problem) -> str:
    """A prompt asking for a solution only: independent samples for the agreement check (CodeT)."""
    return (f"Solve this programming problem in Python.\n\n{problem.prompt.strip()}\n\n"
            f"Reply with the complete function `{problem.entry_point}` in one ```python block.")


def valid_test(line: str, entry_point: str) -> bool:
    """One assert statement that calls the entry point."""
    try:
        tree = ast.parse(line)
    except SyntaxError:
        return False
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == entry_point]
    return len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert) and bool(calls)


def parse_tests(text: str, entry_point: str) -> list[str]:
    """Distinct valid assert lines of `text` (fences and prose around them are ignored)."""
    lines = (ln.strip() for ln in text.splitlines())
    return list(dict.fromkeys(t for t in lines if t.startswith("assert") and valid_test(t, entry_point)))


def _defines(code: str, entry_point: str) -> bool:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry_point for n in tree.body)


def screen_text(text: str, parent_prompt: str | None = None) -> Rejection | None:
    """WizardLM's answer-level rules on raw model text: refusal, too short, template copied."""
    if _REFUSAL.search(text):
        return Rejection("refusal", f"the answer apologises or refuses: {_REFUSAL.search(text).group(0)!r}")
    n = len(words(text))
    if n < MIN_WORDS:
        return Rejection("too_short", f"{n} words (< {MIN_WORDS})")
    low = text.lower()
    copied = [m for m in _TEMPLATE_MARKERS if m in low]
    if copied:
        return Rejection("copies_template", f"repeats the prompt's words {copied[0]!r}")
    return None


def parse_answer(text: str, parent: Problem, operator: str, rnd: int) -> Problem | Rejection:
    """A draft Problem (reference and tests unverified) from a model answer, or why it is unusable."""
    entry = parent.entry_point
    bad = screen_text(text)
    if bad:
        return bad
    m = _SECTIONS.search(text)
    if not m:
        return Rejection("bad_layout", "missing one of ### Problem / ### Solution / ### Tests, or out of order")
    prompt = m.group("problem").strip()
    if not re.search(rf"def\s+{re.escape(entry)}\s*\(", prompt):
        return Rejection("signature_lost", f"the new statement does not end with def {entry}(...)")
    reference = extract_code(m.group("solution"), entry)
    if not _defines(reference, entry):
        return Rejection("signature_lost", f"the solution does not define {entry} (or does not parse)")
    gain = set(words(prompt)) - set(words(parent.prompt))
    if not gain:
        return Rejection("no_information_gain", "the new statement uses no word its parent did not")
    tests = parse_tests(m.group("tests"), entry)
    if len(tests) < MIN_TESTS:
        return Rejection("too_few_tests", f"{len(tests)} usable assert lines calling {entry} (< {MIN_TESTS})")
    return Problem(
        id=Problem.make_id(prompt, entry), prompt=prompt, entry_point=entry, tests=tests, reference=reference,
        lineage=Lineage(parent=parent.id, round=rnd, operator=operator, source=parent.lineage.source),
        meta={"tests_verified": "unverified", "evol": {"parent": parent.id, "round": rnd, "operator": operator}})
