import pytest

from rank.plugins import UnknownNameError
from rank.records import ScoredResponse
from rank.strategies import OUTCOME, TIE_BREAK, codet, get_strategy, outcome_score, pangu


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


def v(role, outcomes, code="x", duration=0.0, cid=None):
    """A response from its per-test outcomes (status as the sandbox would decide it)."""
    passed = outcomes.count("pass")
    status = "passed" if passed == len(outcomes) else "partial" if passed else "failed"
    return ScoredResponse(candidate_id=cid or f"{role}-{''.join(o[0] for o in outcomes)}-{code}", model=role,
                          role=role, code=code, score=0.0, status=status, passed=passed, total=len(outcomes),
                          duration_s=duration, outcomes=list(outcomes))


def test_every_builtin_is_in_the_table_and_names_itself():
    for name in ("pangu", "pass_rate", "pass_rate_length", "pass_rate_time", "codet"):
        g = get_strategy(name)("p", "x", [v("teacher", ["pass", "fail"]), v("student", ["fail", "fail"])])
        assert g.strategy == name and g.responses[0].role == "teacher"


@pytest.mark.parametrize("name,field", [("pass_rate_length", "code"), ("pass_rate_time", "duration")])
def test_tie_break_orders_equal_pass_rates_only(name, field):
    cheap = v("student", ["pass", "fail"], **{field: "ab" if field == "code" else 0.1}, cid="cheap")
    dear = v("teacher", ["pass", "fail"], **{field: "abcdef" if field == "code" else 0.9}, cid="dear")
    best = v("student", ["pass", "pass"], **{field: "abcdefghij" if field == "code" else 5.0}, cid="best")
    g = get_strategy(name)("p", "x", [dear, cheap, best])
    assert [x.candidate_id for x in g.responses] == ["best", "cheap", "dear"]
    assert cheap.score - dear.score == pytest.approx(TIE_BREAK)   # a tie-break, never a pass-rate step
    assert best.score == 1.0 and dear.score == 0.5


def test_codet_scores_consensus_size_times_tests_passed():
    agree = [v("student", ["pass", "pass", "fail"], cid=f"a{i}") for i in range(3)]
    alone = v("teacher", ["pass", "pass", "pass"], cid="alone")
    wrong = v("student", ["fail", "fail", "fail"], cid="w")
    g = codet("p", "x", [alone, wrong, *agree])
    # CodeT trusts agreement: 3 responses passing 2 tests (3*2) beat one passing all 3 (1*3).
    assert [x.candidate_id for x in g.responses][:3] == ["a0", "a1", "a2"]
    assert agree[0].score == pytest.approx(3 * 2 / (5 * 3)) and alone.score == pytest.approx(1 * 3 / 15)
    assert wrong.score == 0.0 and g.responses[-1] is wrong


def test_codet_agreement_is_on_which_tests_pass_not_how_many():
    a, b = v("student", ["pass", "fail"], cid="a"), v("student", ["fail", "pass"], cid="b")
    c = v("teacher", ["pass", "fail"], cid="c")
    codet("p", "x", [a, b, c])
    assert a.score == c.score == pytest.approx(2 * 1 / 6) and b.score == pytest.approx(1 / 6)


def test_codet_refuses_verdicts_without_per_test_outcomes():
    old = r("student", "partial", 2)          # a verdict written before Verdict.outcomes existed
    with pytest.raises(ValueError, match="re-run the execute stage"):
        codet("p", "x", [old, r("teacher", "passed", 5)])
