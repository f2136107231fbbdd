import json

import pytest

from rank.records import (Candidate, Problem, RecordError, Verdict, content_id, read_jsonl, write_atomic,
                          write_jsonl)


def _problem(**kw):
    row = {"id": "p1", "prompt": "Return x.\ndef f(x):", "entry_point": "f", "tests": ["assert f(1) == 1"]}
    row.update(kw)
    return row


def test_round_trip(tmp_path):
    p = tmp_path / "p.jsonl"
    write_jsonl(p, [_problem(), _problem(id="p2", lineage={"parent": "p1", "round": 1, "operator": "add_step"})])
    rows = read_jsonl(p, Problem)
    assert [r.id for r in rows] == ["p1", "p2"]
    assert rows[1].lineage.parent == "p1" and rows[1].lineage.round == 1


@pytest.mark.parametrize("row, field, message", [
    (_problem(tests=[1]), "tests[0]", "expected str"),
    (_problem(entry_point="not valid"), "entry_point", "not a Python identifier"),
    (_problem(tests=[]), "tests", "needs 'tests'"),
    ({"id": "p", "prompt": "x", "tests": ["assert 1"]}, "entry_point", "missing"),
    (_problem(lineage={"round": "one"}), "lineage.round", "expected an integer"),
    (_problem(extra=1), "extra", "unknown key"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, row, field, message):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(_problem()) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(RecordError) as e:
        read_jsonl(p, Problem)
    assert e.value.file == str(p) and e.value.line == 3 and e.value.field == field
    assert f"{p}:3: field '{field}'" in str(e.value) and message in str(e.value)


def test_invalid_json_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": 1}\n{nope\n')
    with pytest.raises(RecordError, match=r"bad.jsonl:2: invalid JSON"):
        read_jsonl(p)


def test_verdict_status_and_counts_are_checked(tmp_path):
    p = tmp_path / "v.jsonl"
    p.write_text(json.dumps({"candidate_id": "c", "status": "passed", "passed": 3, "total": 2}) + "\n")
    with pytest.raises(RecordError, match="field 'passed'"):
        read_jsonl(p, Verdict)


def test_candidate_role_checked(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"id": "c", "problem_id": "p", "model": "m", "role": "oracle", "text": "", "code": ""}) + "\n")
    with pytest.raises(RecordError, match="field 'role'"):
        read_jsonl(p, Candidate)


def test_ids_are_content_hashes():
    assert content_id("a", {"x": 1, "y": 2}) == content_id("a", {"y": 2, "x": 1})
    assert content_id("a", 1) != content_id("a", 2)
    assert Problem.make_id("p", "f") == Problem.make_id("p", "f") != Problem.make_id("p", "g")


def test_write_is_atomic_on_failure(tmp_path):
    p = tmp_path / "out.jsonl"
    write_jsonl(p, [{"a": 1}])

    def rows():
        yield {"a": 2}
        raise RuntimeError("killed mid-write")
    with pytest.raises(RuntimeError):
        write_jsonl(p, rows())
    assert read_jsonl(p) == [{"a": 1}]
    assert [f.name for f in tmp_path.iterdir()] == ["out.jsonl"]


def test_write_atomic_text_and_bytes_and_keeps_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "sub" / "eval.json"
    write_atomic(p, '{"pass@1": 0.5}')
    assert p.read_text() == '{"pass@1": 0.5}'
    write_atomic(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    # A crash between writing and renaming (here: fsync fails) leaves the old file and no temp file.
    import os
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError, match="disk gone"):
        write_atomic(p, "new")
    assert p.read_bytes() == b"\x00\x01"
    assert [f.name for f in p.parent.iterdir()] == ["eval.json"]


def test_one_validator_for_records_and_configs():
    """rank.typed checks what records and configs share: Literal, typed dict values, post-init checks."""
    from dataclasses import dataclass, field
    from typing import Literal

    from rank.typed import FieldError, build

    @dataclass
    class Inner:
        k: int = 0

        def __post_init__(self):
            if self.k < 0:
                raise ValueError(f"k must be >= 0, got {self.k}")

    @dataclass
    class Outer:
        mode: Literal["a", "b"] = "a"
        by_name: dict[str, Inner] = field(default_factory=dict)
        x: float | None = None

    out = build(Outer, {"mode": "b", "by_name": {"p": {"k": 2}}, "x": 1})
    assert out.by_name["p"].k == 2 and out.x == 1.0 and isinstance(out.x, float)
    for data, msg in [({"mode": "c"}, "mode: 'c' is not one of 'a', 'b'"),
                      ({"by_name": {"p": {"k": True}}}, "by_name.p.k: expected an integer, got bool True"),
                      ({"by_name": {"p": {"k": -1}}}, "by_name.p: k must be >= 0, got -1"),
                      ({"x": "1"}, "x: expected a number, got str '1'")]:
        with pytest.raises(FieldError) as e:
            build(Outer, data)
        assert str(e.value) == msg


def test_append_jsonl_and_cut_torn_tail(tmp_path):
    from rank.records import append_jsonl, cut_torn_tail

    p = tmp_path / "out.jsonl"
    assert append_jsonl(p, [{"id": "a"}, {"id": "b\ud800"}]) == 2          # a lone surrogate is writable
    with open(p, "a") as fh:
        fh.write('{"id": "c", "sta')                                         # a kill mid-line
    cut_torn_tail(p)
    append_jsonl(p, [{"id": "d"}], fsync=False)
    assert [r["id"] for r in read_jsonl(p)] == ["a", "b\ud800", "d"]
