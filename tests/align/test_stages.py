"""The loop's glue: candidates + verdicts -> ranked groups, execution rows, summaries."""
import pytest

from align import stages
from rank.records import Candidate, Problem, Verdict


def _problem(pid="p1"):
    return Problem(id=pid, prompt="Return x.\ndef f(x):", entry_point="f", tests=["assert f(1) == 1"])


def _cand(cid, role, pid="p1"):
    return Candidate(id=cid, problem_id=pid, model=f"m-{role}", role=role, text="", code=f"# {cid}")


def test_rank_groups_joins_and_applies_the_strategy():
    problems = {"p1": _problem("p1"), "p2": _problem("p2")}
    cands = [_cand("t1", "teacher"), _cand("s1", "student"), _cand("t2", "teacher", "p2"), _cand("s2", "student", "p2")]
    verdicts = [Verdict("t1", "passed", 1, 1), Verdict("s1", "compile_error", 0, 1),
                Verdict("t2", "compile_error", 0, 1), Verdict("s2", "passed", 1, 1)]
    groups = stages.rank_groups(problems, cands, verdicts, "pangu")
    assert [g.problem_id for g in groups] == ["p1"]          # p2 dropped: teacher below student
    assert [r.candidate_id for r in groups[0].responses] == ["t1", "s1"]
    assert groups[0].responses[0].score > groups[0].responses[1].score


def test_rank_groups_needs_a_verdict_for_every_candidate():
    with pytest.raises(KeyError):
        stages.rank_groups({"p1": _problem()}, [_cand("t1", "teacher")], [], "pangu")


def test_execution_rows_carry_the_problem_tests():
    rows = stages.execution_rows([_cand("t1", "teacher")], {"p1": _problem()})
    assert rows == [{"id": "t1", "code": "# t1", "tests": ["assert f(1) == 1"], "test": None, "entry_point": "f",
                     "language": "python", "prompt": _problem().prompt}]


def test_execute_shard_runs_in_the_sandbox():
    pytest.importorskip("rank.sandbox")
    rows = [{"id": "ok", "code": "def f(x):\n    return x\n", "tests": ["assert f(1) == 1", "assert f(2) == 2"],
             "test": None, "entry_point": "f"},
            {"id": "bad", "code": "def f(x):\n    return 0\n", "tests": ["assert f(1) == 1"], "test": None,
             "entry_point": "f"}]
    out = stages.execute_shard(rows, {"workers": 1, "timeout_s": 5.0, "unsafe": False})
    assert [(v["candidate_id"], v["status"], v["passed"], v["total"]) for v in out] == [
        ("ok", "passed", 2, 2), ("bad", "failed", 0, 1)]


def test_verdict_summary_counts_statuses():
    s = stages.verdict_summary([_cand("a", "student"), _cand("b", "student")],
                               [Verdict("a", "passed", 1, 1), Verdict("b", "timeout", 0, 1)])
    assert s == {"m-student": {"n": 2, "statuses": {"passed": 1, "timeout": 1}, "pass_rate": 0.5}}


def test_rank_agreement_writes_each_ranking_and_the_report(tmp_path):
    import json

    problems = {"p1": _problem("p1")}
    cands = [_cand("t1", "teacher"), _cand("s1", "student"), _cand("s2", "student")]
    verdicts = [Verdict("t1", "passed", 1, 1, outcomes=["pass"]), Verdict("s1", "failed", 0, 1, outcomes=["fail"]),
                Verdict("s2", "failed", 0, 1, outcomes=["fail"])]
    groups = stages.rank_groups(problems, cands, verdicts, "pangu")
    taus = stages.rank_agreement(tmp_path, problems, cands, verdicts, "pangu", groups, ["pangu", "codet"])
    assert (tmp_path / "ranked-codet.jsonl").exists() and not (tmp_path / "ranked-pangu.jsonl").exists()
    report = json.loads((tmp_path / "rank-agreement.json").read_text())
    assert report["strategies"] == ["pangu", "codet"] and list(taus) == ["pangu vs codet"]
    assert "| pangu vs codet |" in (tmp_path / "rank-agreement.md").read_text()
