"""Execute candidate programs against their tests in the sandbox; JSON Lines in, verdicts out.

    python -m rank.execute --in IN.jsonl --out OUT.jsonl [--workers 2] [--timeout 5] [--unsafe]

Input rows: {"id", "code", "tests": [snippet, ...]} or HumanEval-style {"id", "code", "test",
"entry_point"} (`code` is then the whole program); optional "entry_point" (the function under test) and
"prompt" (the problem's prompt: helpers it implements are the tests' own); other fields are ignored. Every row is checked
before anything runs; a bad row stops the run with a RecordError naming file, line and field.
Output rows: {"id", "status", "passed", "total", "duration_s", "stdout", "error"}, appended and flushed
as each job finishes, so a rerun skips ids already in OUT (resumable; a torn last line is dropped).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from rank.records import Problem, RecordError, append_jsonl, cut_torn_tail, iter_lines
from rank.sandbox import Job, Sandbox, SandboxConfig, SandboxUnavailable, job_for


def read_jobs(path: str) -> list[Job]:
    """Parse and check every row of `path` (RecordError names file, line and field)."""
    try:
        return _read_jobs(path)
    except UnicodeDecodeError as e:
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as bad:
                    raise RecordError(f"not valid UTF-8: byte {raw[bad.start]:#04x} at column {bad.start + 1}",
                                      file=path, line=lineno) from None
        raise RecordError(f"not valid UTF-8: {e.reason}", file=path) from None


def _read_jobs(path: str) -> list[Job]:
    jobs, seen = [], {}
    for lineno, row in iter_lines(path):
        if not isinstance(row, dict):
            raise RecordError(f"expected a JSON object, got {type(row).__name__}", file=path, line=lineno)
        for name in ("id", "code"):
            if name not in row:
                raise RecordError("missing (required)", file=path, line=lineno, field=name)
        problem = Problem(id=row["id"], prompt=row.get("prompt") or "", entry_point=row.get("entry_point") or "",
                          tests=row.get("tests"), test=row.get("test"))
        job = dataclasses.replace(job_for(problem, row["code"], row["id"]), language=row.get("language", "python"))
        problem = job.problem()
        if problem:
            raise RecordError(problem[1], file=path, line=lineno, field=problem[0])
        if job.id in seen:
            raise RecordError(f"duplicate id {job.id!r} (first on line {seen[job.id]})",
                              file=path, line=lineno, field="id")
        seen[job.id] = lineno
        jobs.append(job)
    return jobs


def done_ids(path: str) -> set[str]:
    """Ids already in OUT. A last line torn by a crash is cut off so appends stay line-aligned."""
    if not os.path.exists(path):
        return set()
    cut_torn_tail(path)
    ids = set()
    for raw in Path(path).read_bytes().splitlines():
        try:
            ids.add(json.loads(raw)["id"])
        except (ValueError, KeyError, TypeError):
            continue
    return ids


class _Progress:
    """tqdm when importable, else a plain counter on stderr."""

    def __init__(self, total: int, initial: int):
        self.n, self.total = initial, total
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="job", file=sys.stderr)
        except ImportError:
            self.bar = None

    def update(self) -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.n == self.total or self.n % 50 == 0:
            print(f"rank.execute: {self.n}/{self.total}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rank.execute", description=__doc__.splitlines()[0])
    ap.add_argument("--in", dest="inp", required=True, help="input JSON Lines")
    ap.add_argument("--out", required=True, help="output JSON Lines (appended; reruns resume)")
    ap.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1),
                    help="parallel sandboxes (default 2 per core: each waits on its candidate half the time)")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds per test and for the program's top level")
    ap.add_argument("--job-timeout", type=float, default=30.0, help="seconds for a whole job")
    ap.add_argument("--memory-mb", type=int, default=1024)
    ap.add_argument("--unsafe", action="store_true",
                    help="run WITHOUT bubblewrap (only for trusted code; warns on every run)")
    args = ap.parse_args(argv)
    try:
        jobs = read_jobs(args.inp)
    except (RecordError, OSError) as e:
        print(f"rank.execute: {e}", file=sys.stderr)
        return 2
    try:
        config = SandboxConfig(workers=args.workers, timeout_s=args.timeout, job_timeout_s=args.job_timeout,
                               memory_mb=args.memory_mb, unsafe=args.unsafe)
    except ValueError as e:
        print(f"rank.execute: {e}", file=sys.stderr)
        return 2
    done = done_ids(args.out)
    todo = [j for j in jobs if j.id not in done]
    progress = _Progress(len(jobs), len(jobs) - len(todo))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    try:
        with Sandbox(config) as sb:
            for _, v in sb.iter_run(todo):
                row = {"id": v.candidate_id, "status": v.status, "passed": v.passed, "total": v.total,
                       "duration_s": v.duration_s, "stdout": v.stdout, "error": v.error}
                # flushed per verdict; not fsynced (6 ms each here): a process kill loses nothing written
                append_jsonl(args.out, [row], fsync=False)
                progress.update()
    except SandboxUnavailable as e:
        print(f"rank.execute: {e}", file=sys.stderr)
        return 2
    finally:
        progress.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
