"""Seed problems from benchmark files and Problem JSONL, as `rank.records.Problem` rows.

    python -m evol.seeds humaneval:../shared/data/humaneval/HumanEval.jsonl.gz     # prints a summary
    python -m evol.seeds mbpp:../shared/data/mbpp/mbpp.jsonl@train

Loaders take a path: the package never ships or looks for the data itself.
- HumanEval (arXiv:2107.03374): `prompt` (signature + docstring) is the problem; its `check`
  function goes in `test`; the reference is the whole program, prompt + canonical solution.
- MBPP (arXiv:2108.07732): the prompt is the NL text plus the reference's signature; the asserts
  are independent `tests` (setup code, when a task has any, is prepended to each).
- A JSONL of Problem rows, validated by `rank.records.read_jsonl`.
Standard library only (no align, no torch).
"""
from __future__ import annotations

import ast
import gzip
import json
import sys
import warnings
from pathlib import Path
from typing import Callable

from rank.plugins import resolve
from rank.records import Lineage, Problem, RecordError, read_jsonl

# Task-id ranges of the MBPP splits, from google-research mbpp/README.md.
MBPP_SPLITS: dict[str, tuple[int, int]] = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600),
                                           "train": (601, 974)}


def _rows(path: str | Path) -> list[dict]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        rows = []
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise RecordError(f"invalid JSON: {e.msg}", file=str(path), line=lineno) from None
        return rows


def _need(row: dict, keys: tuple[str, ...], path: str | Path, lineno: int) -> None:
    for k in keys:
        if k not in row:
            raise RecordError("missing", file=str(path), line=lineno, field=k)


def load_humaneval(path: str | Path) -> list[Problem]:
    """HumanEval rows (task_id, prompt, canonical_solution, test, entry_point) as Problems."""
    out = []
    for lineno, r in enumerate(_rows(path), 1):
        _need(r, ("task_id", "prompt", "canonical_solution", "test", "entry_point"), path, lineno)
        out.append(Problem(
            id=Problem.make_id(r["prompt"], r["entry_point"]), prompt=r["prompt"], entry_point=r["entry_point"],
            test=r["test"], reference=r["prompt"] + r["canonical_solution"],
            lineage=Lineage(source="humaneval"), meta={"task_id": r["task_id"], "benchmark": "humaneval"}))
    return out


def _mbpp_entry_point(tree: ast.Module, tests: list[str]) -> ast.FunctionDef:
    """The top-level function the first test calls first (outermost call), among those defined."""
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    for test in tests:
        for node in ast.walk(ast.parse(test)):     # breadth-first: outer calls before inner ones
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in defs:
                return defs[node.func.id]
    raise ValueError(f"no function defined by the reference is called by the tests (defined: {sorted(defs)})")


def _signature(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    prefix = "async def" if isinstance(fn, ast.AsyncFunctionDef) else "def"
    returns = f" -> {ast.unparse(fn.returns)}" if fn.returns else ""
    return f"{prefix} {fn.name}({ast.unparse(fn.args)}){returns}:"


def load_mbpp(path: str | Path, split: str | None = None) -> list[Problem]:
    """MBPP rows (task_id, text, code, test_list, test_setup_code) as Problems; `split` by task id."""
    if split is not None and split not in MBPP_SPLITS:
        raise ValueError(f"unknown MBPP split {split!r}; known: {', '.join(MBPP_SPLITS)}")
    lo, hi = MBPP_SPLITS[split] if split else (float("-inf"), float("inf"))
    out = []
    for lineno, r in enumerate(_rows(path), 1):
        _need(r, ("task_id", "text", "code", "test_list"), path, lineno)
        if not lo <= r["task_id"] <= hi:
            continue
        code = r["code"].replace("\r\n", "\n")
        try:
            with warnings.catch_warnings():   # old escapes like "\d" in the data: not our concern
                warnings.simplefilter("ignore")
                fn = _mbpp_entry_point(ast.parse(code), r["test_list"])
        except (SyntaxError, ValueError) as e:
            raise RecordError(str(e), file=str(path), line=lineno, field="code") from None
        signature = _signature(fn)
        setup = (r.get("test_setup_code") or "").replace("\r\n", "\n").strip()
        tests = [f"{setup}\n{t}" if setup else t for t in r["test_list"]]
        prompt = f"{r['text'].strip()}\n{signature}"
        out.append(Problem(
            id=Problem.make_id(prompt, fn.name), prompt=prompt, entry_point=fn.name, tests=tests,
            reference=code, lineage=Lineage(source="mbpp"),
            meta={"task_id": r["task_id"], "benchmark": "mbpp", "split": _mbpp_split(r["task_id"])}))
    return out


def _mbpp_split(task_id: int) -> str | None:
    return next((s for s, (lo, hi) in MBPP_SPLITS.items() if lo <= task_id <= hi), None)


def load_problems(path: str | Path) -> list[Problem]:
    """A JSONL of Problem rows; a bad row raises RecordError naming file, line and field."""
    return read_jsonl(path, Problem)


LOADERS: dict[str, Callable[..., list[Problem]]] = {
    "humaneval": load_humaneval, "mbpp": load_mbpp, "jsonl": load_problems}


def load_seeds(source: str) -> list[Problem]:
    """`humaneval:PATH`, `mbpp:PATH` or `mbpp:PATH@split`, `jsonl:PATH`, or a bare path to Problem JSONL."""
    kind, sep, rest = source.partition(":")
    if not sep or "/" in kind or "\\" in kind or Path(source).exists():
        return load_problems(source)
    loader = resolve(LOADERS, kind, "seed loader")
    if kind == "mbpp" and "@" in rest:
        path, _, split = rest.rpartition("@")
        return loader(path, split=split)
    return loader(rest)


if __name__ == "__main__":
    probs = load_seeds(sys.argv[1])
    print(json.dumps({"problems": len(probs), "first": probs[0].prompt[:200] if probs else None}))
