"""python -m rank.execute: round trip, resumability, bad rows.

    .venv/bin/python -m pytest tests/rank/test_execute_cli.py -q
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rank.execute import done_ids, main, read_jobs
from rank.records import RecordError

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(__import__("shutil").which("bwrap") is None, reason="bubblewrap not installed")

ROWS = [
    {"id": "a", "code": "def f(x):\n    return x + 1\n", "tests": ["assert f(1) == 2", "assert f(2) == 3"],
     "problem_id": "p1"},
    {"id": "b", "code": "def f(x):\n    return x\n", "tests": ["assert f(1) == 2", "assert f(2) == 2"]},
    {"id": "c", "code": "def g(x):\n    return -x\n", "test": "def check(candidate):\n    assert candidate(1) == -1\n",
     "entry_point": "g"},
    {"id": "d", "code": "def f(x) return", "tests": ["assert f(1) == 2"]},
    # the prompt implements `scale`: the tests use the prompt's, not the program's forged one
    {"id": "e", "code": "def scale(x):\n    return 0\ndef f(x):\n    return 1\n", "entry_point": "f",
     "prompt": "def scale(x):\n    return 10 * x\n\ndef f(x):\n    \"scale(x) + 1\"\n",
     "tests": ["assert f(2) == scale(2) + 1"]},
]


def write(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_round_trip_through_the_module_cli(tmp_path):
    inp, out = write(tmp_path / "in.jsonl", ROWS), tmp_path / "out.jsonl"
    proc = subprocess.run([sys.executable, "-m", "rank.execute", "--in", str(inp), "--out", str(out),
                           "--workers", "2", "--timeout", "2"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = {r["id"]: r for r in read(out)}
    assert {k: (r["status"], r["passed"], r["total"]) for k, r in rows.items()} == {
        "a": ("passed", 2, 2), "b": ("partial", 1, 2), "c": ("passed", 1, 1), "d": ("compile_error", 0, 1),
        "e": ("failed", 0, 1)}
    assert all({"duration_s", "stdout", "error"} <= set(r) for r in rows.values())


def test_resume_skips_done_ids_and_repairs_a_torn_line(tmp_path):
    inp, out = write(tmp_path / "in.jsonl", ROWS), tmp_path / "out.jsonl"
    first = {"id": "a", "status": "passed", "passed": 2, "total": 2, "duration_s": 0.0, "stdout": "", "error": "old"}
    out.write_text(json.dumps(first) + "\n" + '{"id": "b", "sta')        # a crash mid-line
    assert done_ids(str(out)) == {"a"}
    assert main(["--in", str(inp), "--out", str(out), "--workers", "1"]) == 0
    rows = read(out)
    assert [r["id"] for r in rows].count("a") == 1 and rows[0]["error"] == "old"
    assert sorted(r["id"] for r in rows) == ["a", "b", "c", "d", "e"]
    assert main(["--in", str(inp), "--out", str(out), "--workers", "1"]) == 0    # nothing left to do
    assert len(read(out)) == 5


@pytest.mark.parametrize("row,line,field", [
    ('{"id": "x", "code": "pass", "tests": ["assert 1"]', 2, None),
    ({"code": "pass", "tests": ["assert 1"]}, 2, "id"),
    ({"id": "x", "tests": ["assert 1"]}, 2, "code"),
    ({"id": "x", "code": "pass"}, 2, "tests"),
    ({"id": "x", "code": "pass", "tests": "assert 1"}, 2, "tests"),
    ({"id": "x", "code": "pass", "test": "def check(c): pass"}, 2, "entry_point"),
    ({"id": "a", "code": "pass", "tests": ["assert 1"]}, 2, "id"),
    ([1, 2], 2, None),
])
def test_bad_rows_name_file_line_and_field(tmp_path, row, line, field, capsys):
    inp = write(tmp_path / "in.jsonl", [ROWS[0], row])
    with pytest.raises(RecordError) as err:
        read_jobs(str(inp))
    assert (err.value.file, err.value.line, err.value.field) == (str(inp), line, field)
    assert main(["--in", str(inp), "--out", str(tmp_path / "out.jsonl")]) == 2
    message = capsys.readouterr().err
    assert f"{inp}:{line}" in message and (field is None or f"field '{field}'" in message)
    assert not (tmp_path / "out.jsonl").exists()
