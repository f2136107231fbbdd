"""The records that flow between stages, defined once (docs/design.md §3).

Every stage reads and writes JSON Lines of these records. Reading validates each row
and raises `RecordError` naming the file, the line and the field, so a bad row in a
10 GB file is found at once and nothing already written is lost.

Only the standard library is used here: sandbox workers import this module.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, TypeVar

from rank.typed import FieldError, build

T = TypeVar("T")

STATUSES = (
    "passed", "partial", "failed", "runtime_error", "compile_error",
    "timeout", "memory", "sandbox_error",
)
ROLES = ("teacher", "student")


class RecordError(ValueError):
    """A row that does not match its record type: names file, line and field."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.file, self.line, self.field = file, line, field
        where = ":".join(str(p) for p in (file, line) if p is not None)
        prefix = f"{where}: " if where else ""
        fld = f"field '{field}': " if field else ""
        super().__init__(f"{prefix}{fld}{message}")


def content_id(*parts: Any) -> str:
    """A stable 16-hex-digit id from the JSON of `parts` (content hashing, docs/design.md §3)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Lineage:
    parent: str | None = None      # id of the problem this one was evolved from
    round: int = 0                 # evolution round (0 = seed)
    operator: str | None = None    # evolution operator that produced it
    source: str = "seed"           # where the root came from ("tasks", "humaneval", a file ...)


@dataclass
class Problem:
    """A programming problem: NL spec + signature, and tests.

    `tests` are independent snippets (each one passes or fails on its own); a
    HumanEval-style problem puts its `check(candidate)` function in `test` instead.
    """
    id: str
    prompt: str
    entry_point: str
    tests: list[str] = field(default_factory=list)
    test: str | None = None
    reference: str | None = None
    lineage: Lineage = field(default_factory=Lineage)
    meta: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def make_id(prompt: str, entry_point: str) -> str:
        return content_id("problem", prompt, entry_point)


@dataclass
class Candidate:
    id: str
    problem_id: str
    model: str
    role: str                      # "teacher" | "student"
    text: str                      # raw model output
    code: str                      # extracted program
    params: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def make_id(problem_id: str, model: str, params: dict, index: int) -> str:
        return content_id("candidate", problem_id, model, params, index)


@dataclass
class Verdict:
    candidate_id: str
    status: str                    # one of STATUSES
    passed: int
    total: int
    duration_s: float = 0.0
    stdout: str = ""
    error: str = ""
    # One entry per test run, in test order: "pass", "fail", "error", "timeout", "memory",
    # "unsupported"; tests never reached are absent. Lets rankers compare which tests pass (CodeT).
    outcomes: list[str] = field(default_factory=list)


@dataclass
class ScoredResponse:
    candidate_id: str
    model: str
    role: str
    code: str
    score: float                   # higher is better
    status: str
    passed: int = 0
    total: int = 0
    duration_s: float = 0.0            # the verdict's wall time (runtime tie-breaks)
    outcomes: list[str] = field(default_factory=list)   # the verdict's per-test outcomes


@dataclass
class RankedGroup:
    problem_id: str
    prompt: str
    strategy: str
    responses: list[ScoredResponse]   # sorted best first


# ---------------------------------------------------------------- validation (rank.typed + these rules)

def _validate_semantics(obj: Any) -> None:
    if isinstance(obj, Verdict):
        if obj.status not in STATUSES:
            raise FieldError("status", f"{obj.status!r} is not one of {', '.join(STATUSES)}")
        if not 0 <= obj.passed <= obj.total:
            raise FieldError("passed", f"must be within 0..total ({obj.total}), got {obj.passed}")
    if isinstance(obj, Candidate) and obj.role not in ROLES:
        raise FieldError("role", f"{obj.role!r} is not one of {', '.join(ROLES)}")
    if isinstance(obj, Problem):
        if not obj.tests and not obj.test:
            raise FieldError("tests", "a problem needs 'tests' (snippets) or 'test' (a check function)")
        if not obj.entry_point.isidentifier():
            raise FieldError("entry_point", f"{obj.entry_point!r} is not a Python identifier")


def from_dict(cls: type[T], row: Any, *, file: str | None = None, line: int | None = None) -> T:
    """Build record `cls` from a parsed JSON object, or raise RecordError naming file/line/field."""
    if not isinstance(row, dict):
        raise RecordError(f"expected a JSON object, got {type(row).__name__}", file=file, line=line)
    try:
        obj = build(cls, row)
        _validate_semantics(obj)
        return obj
    except FieldError as e:
        raise RecordError(e.message, file=file, line=line, field=e.field) from None


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


# ---------------------------------------------------------------- files

def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed JSON) for each non-blank line; bad JSON names file and line."""
    path = str(path)
    with open(path, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                yield lineno, json.loads(raw)
            except json.JSONDecodeError as e:
                raise RecordError(f"invalid JSON: {e.msg} (column {e.colno})", file=path, line=lineno) from None


def iter_jsonl(path: str | os.PathLike, cls: type[T] | None = None) -> Iterator[T]:
    """Yield rows of a JSON Lines file, as `cls` records if given, validating each."""
    for lineno, row in iter_lines(path):
        yield from_dict(cls, row, file=str(path), line=lineno) if cls is not None else row


def read_jsonl(path: str | os.PathLike, cls: type[T] | None = None) -> list[T]:
    return list(iter_jsonl(path, cls))


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, binary: bool = False) -> Iterator[IO]:
    """Open a temp file beside `path` for writing; on success fsync it and rename it onto `path`.

    A reader (or a rerun after `kill -9`) sees the old file or the new one, never half of one:
    the temp file is in the same folder, so `os.replace` is an atomic rename on one filesystem.
    On an exception the temp file is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write `data` (text as UTF-8, or bytes) to `path` atomically: the one writer for artifacts."""
    with atomic_file(path, binary=isinstance(data, bytes)) as fh:
        fh.write(data)


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> int:
    """Write rows (records or dicts) atomically, streaming (see `atomic_file`); returns the row count."""
    n = 0
    with atomic_file(path) as fh:
        for r in rows:
            fh.write(json.dumps(r if isinstance(r, dict) else dataclasses.asdict(r), ensure_ascii=False) + "\n")
            n += 1
    return n


def append_jsonl(path: str | os.PathLike, rows: Iterable[Any], *, fsync: bool = True) -> int:
    """Append rows as whole lines and flush (and fsync): the writer of resumable outputs, which a rerun
    extends (`python -m rank.execute`, `python -m align.generate`). A kill loses at most the lines being
    written; `cut_torn_tail` removes a partial last line before the rerun appends. ASCII JSON, so any
    str (a lone surrogate in a program's output included) can be written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r if isinstance(r, dict) else dataclasses.asdict(r)) + "\n" for r in rows)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())
    return text.count("\n")


def cut_torn_tail(path: str | os.PathLike) -> None:
    """Cut a partial last line (left by a killed `append_jsonl`) off `path`, so appends stay line-aligned."""
    with open(path, "rb+") as fh:
        data = fh.read()
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            fh.truncate(keep)
