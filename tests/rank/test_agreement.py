"""Ranker agreement: Kendall's tau-b and the best-choice comparison (rank/agreement.py)."""
import pytest

from rank.agreement import agreement, compare_pair, kendall_tau_b, markdown
from rank.records import RankedGroup, ScoredResponse


def test_kendall_tau_b_known_values():
    assert kendall_tau_b([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # scipy.stats.kendalltau([1, 2, 2, 3], [1, 3, 2, 4]) -> 0.9128709291752769 (tau-b, ties corrected)
    assert kendall_tau_b([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.9128709291752769)
    assert kendall_tau_b([1, 1, 1], [1, 2, 3]) is None            # a constant scoring has no order
    with pytest.raises(ValueError):
        kendall_tau_b([1], [1, 2])


def group(pid, scores, strategy):
    rs = [ScoredResponse(candidate_id=cid, model="m", role="teacher", code="", score=s, status="passed")
          for cid, s in sorted(scores.items(), key=lambda kv: -kv[1])]
    return RankedGroup(problem_id=pid, prompt="", strategy=strategy, responses=rs)


def test_compare_pair_counts_prompts_taus_and_best_choices():
    a = [group("p1", {"x": 3, "y": 2, "z": 1}, "a"), group("p2", {"x": 1, "y": 1}, "a"),
         group("p3", {"x": 2, "y": 1}, "a"), group("p4", {"x": 1, "y": 1}, "a")]
    b = [group("p1", {"x": 1, "y": 2, "z": 3}, "b"), group("p2", {"x": 2, "y": 1}, "b"),
         group("p4", {"x": 1, "y": 2}, "b")]                                              # p3 dropped by b
    out = compare_pair(a, b)
    assert (out["prompts_a"], out["prompts_b"], out["prompts_both"]) == (4, 3, 3)
    assert out["tau_defined"] == 1 and out["tau_undefined"] == 2 and out["tau_mean"] == -1.0
    # p1: a picks x, b picks z, each worse under the other; p2: a's tie broken to x, the same as b's;
    # p4: a's tie broken to x, b picks y: y is no worse under a, x is worse under b.
    assert out["best_differs"] == 2 and out["b_best_worse_under_a"] == 1 and out["a_best_worse_under_b"] == 2
    assert sum(h["count"] for h in out["tau_histogram"]) == 1 and out["tau_histogram"][0]["count"] == 1


def test_agreement_covers_every_pair_and_renders():
    gs = {"a": [group("p", {"x": 2, "y": 1}, "a")], "b": [group("p", {"x": 2, "y": 1}, "b")],
          "c": [group("p", {"x": 1, "y": 2}, "c")]}
    rep = agreement(gs)
    assert list(rep["pairs"]) == ["a vs b", "a vs c", "b vs c"]
    assert rep["pairs"]["a vs b"]["tau_mean"] == 1.0 and rep["pairs"]["a vs c"]["best_differs"] == 1
    md = markdown(rep)
    assert "| a vs c | 1 / 1 / 1 | -1.000 |" in md
