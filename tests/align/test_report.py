"""align.report on a hand-made run directory: intervals, outcome counts, funnel, curves, figures."""
from __future__ import annotations

import pytest

from align import report
from align.rundir import StageResult
from rank.records import write_jsonl


def test_wilson_hand_computed():
    # p = 0.5, n = 10: centre 0.5, half-width 1.96 * sqrt(0.025 + 0.009604) / 1.38416 = 0.26341
    assert report.wilson(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert report.wilson(0, 10) == pytest.approx((0.0, 0.27754), abs=1e-5)     # never below 0
    assert report.wilson(10, 10)[1] == 1.0


def test_bootstrap_when_problems_have_several_samples():
    rows = [{"n": 4, "c": c} for c in (0, 1, 2, 4, 4, 3)]
    mean, lo, hi = report.pass_interval(rows)
    assert mean == pytest.approx(14 / 24) and 0 <= lo < mean < hi <= 1
    assert report.pass_interval(rows) == (mean, lo, hi)                          # seeded


def _sample(status):
    return {"status": status, "passed": 0, "total": 1, "code": "", "error": ""}


class _Run:
    def __init__(self, root, results):
        self.root, self.results = root, results


def _fake_run(root):
    statuses = {"eval-student": ["passed", "failed", "compile_error", "runtime_error"],
                "eval-teacher": ["passed", "passed", "partial", "timeout"],
                "eval-rrtf": ["passed", "passed", "failed", "runtime_error"]}
    for stage, ss in statuses.items():
        write_jsonl(root / "eval" / f"{stage}.jsonl",
                    [{"id": f"p{i}", "n": 1, "c": int(s == "passed"), "samples": [_sample(s)]} for i, s in enumerate(ss)])
    lineage = lambda r: {"parent": None, "round": r, "operator": None, "source": "tasks"}   # noqa: E731
    write_jsonl(root / "problems.jsonl", [{"id": f"q{i}", "lineage": lineage(int(i >= 3))} for i in range(5)])
    write_jsonl(root / "rejected.jsonl", [{"code": "too_deep", "detail": "4 > 3"}, {"code": "too_deep", "detail": "5"},
                                          {"code": "duplicate", "detail": "near q1"}])
    write_jsonl(root / "ranked.jsonl", [{"problem_id": "q0"}, {"problem_id": "q1"}])
    write_jsonl(root / "train" / "rrtf" / "log_history.jsonl",
                [{"loss": 2.0 - s / 10, "rank_loss": 0.5, "ft_loss": 1.5 - s / 10, "step": s} for s in (1, 2, 3)]
                + [{"train_runtime": 3.0, "step": 3}])
    return _Run(root, [StageResult("problems", True, 1.5), StageResult("rank", False, 0.2, {"sampled": {
        "tiny:teacher": {"n": 4, "statuses": {"passed": 3, "memory": 1}, "pass_rate": 0.75}}}),
        StageResult("train-rrtf", False, 9.0, {"rows": 7})])


def test_report_page_and_figures(tmp_path):
    run = _fake_run(tmp_path)
    table = report.write_report(run, title="tiny", method="rrtf", models={"student": "tiny:student"},
                                evals={"heldout": {"student_before": "eval-student", "teacher": "eval-teacher",
                                                   "student_after": "eval-rrtf"}},
                                train_dir=tmp_path / "train" / "rrtf", total_s=12.0)
    md = (tmp_path / "report.md").read_text()
    lo, hi = report.wilson(1, 4)
    assert f"| student (before) | 25.0 [{100 * lo:.1f}, {100 * hi:.1f}] |" in md
    assert "| student (after) | 50.0 [" in md
    assert "the student gains +25.0 points; it now solves 1 problems it failed before and fails 0" in md
    # outcomes: compile error, runtime error, failed, partial, passed, timeout / other
    assert "| student (before) | 1 (25.0%) | 1 (25.0%) | 1 (25.0%) | 0 (0.0%) | 1 (25.0%) | 0 (0.0%) |" in md
    assert "| teacher | 0 (0.0%) | 0 (0.0%) | 0 (0.0%) | 1 (25.0%) | 2 (50.0%) | 1 (25.0%) |" in md
    assert "| tiny:teacher | 4 | 75.0% | 0 | 0 | 0 | 0 | 3 | 1 |" in md
    for row in ("| seed problems kept | 3 |", "| evolved problems kept | 2 |",
                "| rejected: too_deep (the composition is deeper than allowed) | 2 |",
                "| rejected: duplicate (the same problem exists already (exact, or near duplicate by MinHash)) | 1 |",
                "| ranked groups | 2 |", "| training rows | 7 |",
                "| problems | reused | 1.5 |", "| train-rrtf | ran | 9.0 |"):
        assert row in md, row
    assert "3 logged steps up to step 3; last: total loss 1.7000, rank term 0.5000, CE (fine-tune) term 1.2000" in md
    for png in ("eval.png", "outcomes.png", "training.png"):
        assert (tmp_path / png).stat().st_size > 1000, png
    assert table.splitlines()[1].startswith("student (before)") and "0.250 [" in table


def test_training_curves_go_to_tensorboard_and_log_history(tmp_path):
    """`train.args.report_to: [tensorboard]`: the ranking trainer's loss, rank and CE terms reach TensorBoard
    with the values log_history.jsonl (the report's source) holds."""
    import dataclasses
    import json

    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from align import tiny
    from align.train.losses import RankLossConfig
    from align.train.rank_trainer import train_rank

    models = tiny.build_tiny(dataclasses.replace(tiny.PRESETS["test"], cache_dir=str(tmp_path / "cache")),
                             log=lambda s: None)
    rows = [{"prompt": "Add.\ndef add(a, b):", "responses": ["def add(a, b):\n    return a + b", "add = 1"],
             "scores": [1.0, 0.0], "roles": ["teacher", "student"]}] * 4
    out = tmp_path / "train"
    train_rank(models.student_path, rows, str(out), RankLossConfig(),
               {"per_device_train_batch_size": 2, "max_steps": 2, "logging_steps": 1, "save_strategy": "no",
                "use_cpu": True, "report_to": ["tensorboard"]})
    logged = [json.loads(line) for line in (out / "log_history.jsonl").read_text().splitlines()]
    (events,) = (out / "runs").iterdir()
    acc = EventAccumulator(str(events))
    acc.Reload()
    for key in ("loss", "rank_loss", "ft_loss"):
        tb = [(e.step, e.value) for e in acc.Scalars(f"train/{key}")]
        assert tb == [(h["step"], pytest.approx(h[key], rel=1e-6)) for h in logged if key in h and "step" in h], key
        assert len(tb) == 2


def test_rejections_by_round_operator_and_code(tmp_path):
    from align.report import rejections_table
    from rank.records import write_jsonl

    assert rejections_table(tmp_path) == []
    write_jsonl(tmp_path / "rejected.jsonl", [
        {"round": 1, "operator": "add_step", "code": "refusal", "detail": "x"},
        {"round": 1, "operator": "add_step", "code": "refusal", "detail": "y"},
        {"round": 2, "operator": "complexity", "code": "reference_fails", "detail": "z"},
        {"reason": "an old row without a code"}])
    lines = rejections_table(tmp_path)
    assert "| 1 | add_step | refusal | 2 |" in lines and "| 2 | complexity | reference_fails | 1 |" in lines
