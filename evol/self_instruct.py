"""Self-instruct for code, the recipe of Code Llama §2.5 (arXiv:2308.12950), as plain functions.

Code Llama prompted a model for interview-style questions, deduplicated them, had the model
write unit tests, sampled 10 solutions per question, ran them, and kept the first passing
one (62k questions -> 52k after dedup -> 14k with a passing solution). The stages here:

    questions = QUESTION_GENERATORS[name](n, seed, generate, topics, seeds)   # -> Problems, no tests
    problems, drops = TEST_GENERATORS[name](questions, generate, min_tests)   # tests attached
    answers = select(problems, solutions, verdicts)                           # answer + rejected answers

Generators are a table: `tasks` (the built-in task family: the embedded default, where tiny
models cannot write questions) and `model` (an LLM through the plain `generate` callable);
a user's own as "package.module:name". align/recipes/self_instruct.py runs the stages.
"""
from __future__ import annotations

import random
import re
from typing import Any, Callable, Sequence

from evol import tasks as T
from evol.llm_evolve import parse_tests
from evol.verify import MIN_TESTS
from rank.plugins import resolve
from rank.records import Lineage, Problem, RecordError, iter_lines

Generate = Callable[[list[str]], list[str]]

TOPICS = ["strings", "lists and sorting", "dictionaries and counting", "number theory", "recursion",
          "two pointers", "stacks and queues", "dynamic programming", "matrices", "dates and times",
          "bit manipulation", "intervals", "greedy choices", "searching", "sets", "parsing text"]

_QUESTION_PROMPT = """Write {k} new, self-contained Python programming questions of the kind asked in a job \
interview{about}. Each question asks for one function; state precisely what it returns for every input.

{examples}Use exactly this layout for each question, and nothing else:
### Question
(the statement, in a few sentences)
def function_name(arguments):
"""

_TESTS_PROMPT = """Write unit tests for the function described below. Give at least {min_tests} lines, each \
one `assert {entry_point}(...) == ...` with the exact expected value, covering ordinary and edge cases.

{problem}

### Tests
"""

_SIGNATURE = re.compile(r"^\s*def\s+([A-Za-z_]\w*)\s*\(.*\)\s*(->\s*[^:]+)?:\s*$", re.M)


# ------------------------------------------------------------------ questions

def question_prompts(n_prompts: int, k: int, seed: int, topics: Sequence[str] = TOPICS,
                     seeds: Sequence[Problem] = ()) -> list[str]:
    """Prompts asking for `k` questions each, cycling through topics (and seed problems as examples)."""
    rng = random.Random(seed)
    out = []
    for i in range(n_prompts):
        about = f" about {topics[i % len(topics)]}" if topics else ""
        shown = rng.sample(list(seeds), min(2, len(seeds))) if seeds else []
        examples = "".join(f"An example of the kind of question wanted:\n{s.prompt.strip()}\n\n" for s in shown)
        out.append(_QUESTION_PROMPT.format(k=k, about=about, examples=examples))
    return out


def parse_questions(text: str, source: str = "self_instruct") -> list[Problem]:
    """Questions from one model answer: each `### Question` block whose last code line is a signature."""
    out = []
    for block in re.split(r"###\s*Question\s*\n", text)[1:]:
        block = block.strip()
        sig = list(_SIGNATURE.finditer(block))
        if not sig:
            continue
        prompt = block[:sig[-1].end()].strip()
        entry = sig[-1].group(1)
        out.append(Problem(id=Problem.make_id(prompt, entry), prompt=prompt, entry_point=entry,
                           lineage=Lineage(source=source), meta={"generator": "model"}))
    return out


def questions_from_model(n: int, seed: int, generate: Generate | None, topics: Sequence[str] = TOPICS,
                         seeds: Sequence[Problem] = (), per_prompt: int = 5) -> list[Problem]:
    """Up to `n` distinct questions written by the model (one batched `generate` call)."""
    if generate is None:
        raise ValueError("the 'model' question generator needs a model (questions.model)")
    texts = generate(question_prompts(-(-n // per_prompt), per_prompt, seed, topics, seeds))
    found: dict[str, Problem] = {}
    for text in texts:
        for q in parse_questions(text):
            found.setdefault(q.id, q)
    return list(found.values())[:n]


def questions_from_tasks(n: int, seed: int, generate: Generate | None = None, topics: Sequence[str] = (),
                         seeds: Sequence[Problem] = (), per_prompt: int = 0) -> list[Problem]:
    """`n` questions from the built-in task family (train split): statement and signature only;
    the structure stays in `meta` so the `tasks` test generator can compute the tests."""
    out = []
    for p in T.generate_problems(n, split="train", seed=seed):
        out.append(Problem(id=p.id, prompt=p.prompt, entry_point=p.entry_point,
                           lineage=Lineage(source="tasks"),
                           meta={k: p.meta[k] for k in ("family", "steps", "depth", "split")} | {"generator": "tasks"}))
    return out


QUESTION_GENERATORS: dict[str, Callable[..., list[Problem]]] = {
    "tasks": questions_from_tasks, "model": questions_from_model}


def read_questions(path: str) -> list[Problem]:
    """Questions JSONL (Problem rows that have no tests yet, so not `read_jsonl(path, Problem)`)."""
    out = []
    for lineno, row in iter_lines(path):
        try:
            out.append(Problem(**{**row, "lineage": Lineage(**row.get("lineage", {}))}))
        except TypeError as e:
            raise RecordError(f"not a question row: {e}", file=str(path), line=lineno) from None
    return out


# ------------------------------------------------------------------ unit tests

def tests_from_model(questions: list[Problem], generate: Generate | None,
                     min_tests: int = MIN_TESTS) -> tuple[list[Problem], list[dict[str, Any]]]:
    """Ask the model for asserts per question; keep questions with at least `min_tests` usable ones."""
    if generate is None:
        raise ValueError("the 'model' test generator needs a model (tests.model)")
    texts = generate([_TESTS_PROMPT.format(min_tests=min_tests, entry_point=q.entry_point, problem=q.prompt.strip())
                      for q in questions])
    kept, dropped = [], []
    for q, text in zip(questions, texts):
        tests = parse_tests(text, q.entry_point)
        if len(tests) < min_tests:
            dropped.append({"id": q.id, "code": "too_few_tests",
                            "detail": f"{len(tests)} usable assert lines calling {q.entry_point} (< {min_tests})"})
        else:
            kept.append(Problem(**{**q.__dict__, "tests": tests}))
    return kept, dropped


def tests_from_tasks(questions: list[Problem], generate: Generate | None = None,
                     min_tests: int = MIN_TESTS) -> tuple[list[Problem], list[dict[str, Any]]]:
    """Tests computed by the task family from each question's structure (its reference outputs)."""
    kept, dropped = [], []
    for q in questions:
        task = T.task_of(q)
        if task is None:
            dropped.append({"id": q.id, "code": "not_applicable", "detail": "not a built-in task"})
            continue
        tests, _ = T.make_tests(task)
        kept.append(Problem(**{**q.__dict__, "tests": tests}))
    return kept, dropped


TEST_GENERATORS: dict[str, Callable[..., tuple[list[Problem], list[dict[str, Any]]]]] = {
    "tasks": tests_from_tasks, "model": tests_from_model}


def question_generator(name: str) -> Callable[..., list[Problem]]:
    return resolve(QUESTION_GENERATORS, name, "question generator")


def test_generator(name: str) -> Callable[..., tuple[list[Problem], list[dict[str, Any]]]]:
    return resolve(TEST_GENERATORS, name, "test generator")


# ------------------------------------------------------------------ answers

def first_passing(problems: list[Problem], candidates: list[dict],
                  verdicts: dict[str, str]) -> list[tuple[Problem, dict, list[dict]]]:
    """Per question with a passing solution: (the question with that solution as its reference,
    the answer = first passing candidate in sample order, the failing candidates as rejected answers).
    `verdicts` maps candidate id -> status."""
    by_problem: dict[str, list[dict]] = {}
    for c in candidates:
        by_problem.setdefault(c["problem_id"], []).append(c)
    out = []
    for p in problems:
        cands = by_problem.get(p.id, [])
        passing = [c for c in cands if verdicts[c["id"]] == "passed"]
        if passing:
            rejected = [c for c in cands if verdicts[c["id"]] != "passed"]
            out.append((Problem(**{**p.__dict__, "reference": passing[0]["code"]}), passing[0], rejected))
    return out


def training_rows(selected: list[tuple[Problem, dict, list[dict]]],
                  verdicts: dict[str, str]) -> tuple[list[dict], list[dict]]:
    """SFT rows (prompt -> answer) and DPO pairs (answer chosen over each rejected answer)."""
    sft, dpo = [], []
    for p, answer, rejected in selected:
        sft.append({"problem_id": p.id, "prompt": p.prompt, "entry_point": p.entry_point,
                    "completion": answer["code"], "tests": p.tests, "model": answer["model"],
                    "tests_verified": p.meta.get("tests_verified")})
        distinct = {r["code"]: r for r in rejected}     # the same wrong program sampled twice is one pair
        dpo += [{"problem_id": p.id, "prompt": p.prompt, "chosen": answer["code"], "rejected": code,
                 "rejected_status": verdicts[r["id"]]} for code, r in distinct.items()]
    return sft, dpo
