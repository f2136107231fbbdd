"""Iterative rounds (loop.rounds): round k samples round k-1's trained student, keeps the teachers' samples."""
import json

import pytest

from align.config_loader import ConfigError, load
from align.recipes.loop_config import RunConfig


def test_rounds_config_is_checked():
    assert load(RunConfig, [], ["loop.rounds=3", "loop.init=base"]).loop.rounds == 3
    for bad in ("loop.rounds=0", "loop.init=scratch", "loop.round=2"):
        with pytest.raises(ConfigError):
            load(RunConfig, [], [bad])


@pytest.mark.slow
def test_two_rounds_on_a_ci_sized_loop(tmp_path, monkeypatch, capsys):
    from align.recipes import rrtf
    from rank.records import Candidate, read_jsonl
    from tests.test_loop import CI

    monkeypatch.setenv("RRTF_TINY_CACHE", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    argv = ["--base", "tiny", "--run-dir", str(run_dir), *CI, "eval.benchmarks=[]", "loop.rounds=2"]
    res = rrtf.main(argv)
    r2 = run_dir / "round-2"
    for name in ("candidates.jsonl", "verdicts.jsonl", "ranked.jsonl", "train/rrtf", "stages/train-rrtf.json"):
        assert (r2 / name).exists(), name
    first = read_jsonl(run_dir / "candidates.jsonl", Candidate)
    second = read_jsonl(r2 / "candidates.jsonl", Candidate)
    # the teachers' samples stay; the student is sampled again from round 1's weights under its own name
    assert {c.id for c in first if c.role == "teacher"} == {c.id for c in second if c.role == "teacher"}
    assert {c.model for c in second if c.role == "student"} == {"tiny:student@round-2"}
    assert not {c.id for c in second if c.role == "student"} & {c.id for c in first}
    verdicts = [json.loads(line) for line in (r2 / "verdicts.jsonl").read_text().splitlines()]
    assert len(verdicts) == len(second)
    assert json.loads((r2 / "stages" / "execute.json").read_text())["stats"]["reused"] == \
        sum(c.role == "teacher" for c in first)
    saved = json.loads((run_dir / "eval.json").read_text())
    assert [r["round"] for r in saved["rounds"]] == [1, 2] == [r["round"] for r in res["rounds"]]
    assert saved["rounds"][1]["pass@1"] == saved["student_after"]["pass@1"]
    assert (run_dir / "eval" / "eval-rrtf-round-1.json").exists()
    capsys.readouterr()
    rrtf.main(argv)                                   # resumed: every stage of both rounds is skipped
    log = capsys.readouterr().out
    assert "] running" not in log and log.count("] skipped") >= 4 + 5 + 4   # round 2, round 1, evals
