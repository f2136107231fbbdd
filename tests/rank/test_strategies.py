import pytest

from rank.plugins import UnknownNameError
from rank.records import ScoredResponse
from rank.strategies import OUTCOME, get_strategy, outcome_score, pangu


def r(role, status, passed=0, total=5, cid=None):
    return ScoredResponse(candidate_id=cid or f"{role}-{status}-{passed}", model=role, role=role, code="",
                          score=0.0, status=status, passed=passed, total=total)


def test_outcome_order_is_pangu_coder2s():
    order = [r("s", "compile_error"), r("s", "runtime_error"), r("s", "failed"), r("s", "partial", 2),
             r("s", "partial", 4), r("s", "passed", 5)]
    scores = [outcome_score(x) for x in order]
    assert scores == sorted(scores) and len(set(scores)) == len(scores)
    assert set(OUTCOME) == {"passed", "partial", "failed", "runtime_error", "compile_error", "timeout",
                            "memory", "sandbox_error"}


def test_teacher_ranks_higher_on_equal_outcome():
    g = pangu("p", "prompt", [r("student", "passed", 5), r("teacher", "passed", 5)])
    assert [x.role for x in g.responses] == ["teacher", "student"]
    assert g.responses[0].score == g.responses[1].score


def test_group_dropped_when_teacher_below_student():
    assert pangu("p", "x", [r("student", "passed", 5), r("teacher", "runtime_error")]) is None
    assert pangu("p", "x", [r("teacher", "passed", 5)]) is None  # no student


def test_ordering_best_first():
    g = pangu("p", "x", [r("student", "compile_error"), r("teacher", "partial", 3), r("student", "partial", 1)])
    assert [x.status for x in g.responses] == ["partial", "partial", "compile_error"]
    assert g.responses[0].role == "teacher" and g.strategy == "pangu"


def test_unknown_strategy_suggests_and_user_strategy_resolves():
    with pytest.raises(UnknownNameError, match="did you mean 'pangu'"):
        get_strategy("pangoo")
    assert get_strategy("rank.strategies:pass_rate").__name__ == "pass_rate"
