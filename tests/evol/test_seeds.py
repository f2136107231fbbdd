"""Seed loaders on the real HumanEval/MBPP files and on small synthetic files.
Run: .venv/bin/python -m pytest tests/evol/test_seeds.py"""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from evol.seeds import load_humaneval, load_mbpp, load_problems, load_seeds
from rank.plugins import UnknownNameError
from rank.records import Problem, RecordError, to_dict, write_jsonl

DATA = Path(__file__).parents[2].parent / "shared/data"
HUMANEVAL = DATA / "humaneval/HumanEval.jsonl.gz"
MBPP = DATA / "mbpp/mbpp.jsonl"


def _run(code: str, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).parents[2])


@pytest.mark.skipif(not HUMANEVAL.exists(), reason=f"HumanEval not found at {HUMANEVAL}")
def test_humaneval_loads_164_and_references_pass_their_check():
    probs = load_humaneval(HUMANEVAL)
    assert len(probs) == 164 and len({p.id for p in probs}) == 164
    p = probs[0]
    assert p.meta["task_id"] == "HumanEval/0" and p.entry_point == "has_close_elements"
    assert p.prompt.lstrip().startswith("from typing import List") and p.test and not p.tests
    assert p.lineage.source == "humaneval"
    # The reference is a whole program: it passes the check, and a broken one does not.
    for prob in probs[:3]:
        ok = _run(prob.reference + "\n" + prob.test + f"\ncheck({prob.entry_point})\n")
        assert ok.returncode == 0, ok.stderr
    bad = _run(p.prompt + "    return not True\n" + p.test + f"\ncheck({p.entry_point})\n")
    assert bad.returncode != 0


@pytest.mark.skipif(not MBPP.exists(), reason=f"MBPP not found at {MBPP}")
def test_mbpp_loads_all_with_signatures_and_splits():
    probs = load_mbpp(MBPP)
    assert len(probs) == 974
    by_task = {p.meta["task_id"]: p for p in probs}
    p = by_task[2]
    assert p.entry_point == "similar_elements"
    assert p.prompt == ("Write a function to find the similar elements from the given two tuple lists.\n"
                        "def similar_elements(test_tup1, test_tup2):")
    assert len(p.tests) == 3 and all(t.startswith("assert similar_elements(") for t in p.tests)
    assert "\r" not in p.reference
    for prob in probs:                            # every signature names the function the tests call
        assert f"def {prob.entry_point}(" in prob.prompt and all(prob.entry_point in t for t in prob.tests)
    assert [len(load_mbpp(MBPP, split=s)) for s in ("prompt", "test", "validation", "train")] == [10, 500, 90, 374]
    raw = [json.loads(line) for line in MBPP.read_text().splitlines()]
    setups = {r["task_id"]: r["test_setup_code"].replace("\r\n", "\n").strip() for r in raw if r["test_setup_code"]}
    assert setups, "the file has tasks with test_setup_code"
    for tid, setup in setups.items():           # prepended to each independent test
        assert all(t.startswith(setup + "\n") for t in by_task[tid].tests)
    for prob in probs[:5]:                        # references pass their tests
        ok = _run(prob.reference + "\n" + "\n".join(prob.tests) + "\n")
        assert ok.returncode == 0, ok.stderr


def test_mbpp_synthetic_entry_point_is_the_called_function(tmp_path):
    row = {"task_id": 700, "text": "Add one.", "code": "def helper(x):\r\n  return x\r\ndef add_one(x: int) -> int:"
           "\r\n  return helper(x) + 1", "test_list": ["assert add_one(helper(1)) == 2"], "test_setup_code": "",
           "challenge_test_list": []}
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (p,) = load_mbpp(path)
    assert p.entry_point == "add_one" and p.prompt.endswith("def add_one(x: int) -> int:")
    assert p.meta["split"] == "train"


def test_humaneval_missing_field_names_file_line_and_field(tmp_path):
    path = tmp_path / "he.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps({"task_id": "X/0", "prompt": "def f():\n", "test": "", "entry_point": "f"}) + "\n")
    with pytest.raises(RecordError, match=r"he.jsonl.gz:1: field 'canonical_solution'"):
        load_humaneval(path)


def test_generic_jsonl_round_trip_and_validation(tmp_path):
    p = Problem(id="p1", prompt="Return 1.\ndef one():", entry_point="one", tests=["assert one() == 1"])
    good = tmp_path / "good.jsonl"
    write_jsonl(good, [p])
    assert load_problems(good) == [p]
    assert load_seeds(str(good)) == [p] and load_seeds(f"jsonl:{good}") == [p]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**to_dict(p), "entry_point": "not an identifier"}) + "\n")
    with pytest.raises(RecordError, match="bad.jsonl:1: field 'entry_point'"):
        load_problems(bad)


def test_load_seeds_unknown_kind_suggests(tmp_path):
    with pytest.raises(UnknownNameError, match="did you mean 'humaneval'"):
        load_seeds("humanevel:x.jsonl")


def test_evol_stays_light():
    out = _run("import sys, evol.seeds, evol.dedup; "
               "print(sorted(m for m in ('torch', 'align', 'transformers') if m in sys.modules))")
    assert out.stdout.strip() == "[]", out.stderr
