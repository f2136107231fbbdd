"""Ranking losses on hand-computed tiny tensors (align/train/losses.py)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from align.train.losses import LOSSES, RankLossConfig, get_loss, rrhf_loss, rrtf_loss  # noqa: E402


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def close(a, b):
    return abs(float(a) - float(b)) < 1e-6


# ---------------------------------------------------------------- RRTF

def test_rrtf_single_pair_by_hand():
    # teacher p = -4/2 = -2, student p = -3/3 = -1: student more likely, violation of 1; gap 3 - 1 = 2
    out = rrtf_loss(t([[-4.0, -3.0]]), t([[2, 3]], torch.long), t([[3.0, 1.0]]), t([[True, False]], torch.bool),
                    RankLossConfig())
    assert close(out["rank_loss"], 2.0)     # -(3 - 1) * min(0, -2 - (-1))
    assert close(out["ft_loss"], 2.0)       # CE on the teacher: 4 nats over 2 tokens
    assert close(out["loss"], 4.0)
    assert int(out["pairs"]) == 1


def test_rrtf_no_violation_gives_zero_rank_loss():
    out = rrtf_loss(t([[-1.0, -9.0]]), t([[1, 3]], torch.long), t([[3.0, 1.0]]), t([[True, False]], torch.bool),
                    RankLossConfig())
    assert close(out["rank_loss"], 0.0) and int(out["pairs"]) == 1


def test_rrtf_tie_gets_tie_margin_and_zero_margin_drops_it():
    args = (t([[-4.0, -3.0]]), t([[2, 3]], torch.long), t([[2.0, 2.0]]), t([[True, False]], torch.bool))
    out = rrtf_loss(*args, RankLossConfig())              # default tie_margin 0.5, violation 1
    assert close(out["rank_loss"], 0.5) and int(out["pairs"]) == 1
    out = rrtf_loss(*args, RankLossConfig(tie_margin=0.25))
    assert close(out["rank_loss"], 0.25)
    out = rrtf_loss(*args, RankLossConfig(tie_margin=0.0))
    assert close(out["rank_loss"], 0.0) and int(out["pairs"]) == 0


def test_rrtf_teacher_below_student_contributes_nothing():
    out = rrtf_loss(t([[-4.0, -3.0]]), t([[2, 3]], torch.long), t([[1.0, 3.0]]), t([[True, False]], torch.bool),
                    RankLossConfig())
    assert close(out["rank_loss"], 0.0) and int(out["pairs"]) == 0
    assert close(out["ft_loss"], 2.0)                     # the teacher is still the fine-tuning target


def test_rrtf_length_normalisation_uses_true_lengths():
    # teacher -6 over 3 tokens = -2 per token; student -4 over 1 token = -4: no violation.
    # Dividing by the padded length (3) would make the student -1.33 > -2 and add a rank loss.
    out = rrtf_loss(t([[-6.0, -4.0]]), t([[3, 1]], torch.long), t([[3.0, 0.0]]), t([[True, False]], torch.bool),
                    RankLossConfig())
    assert close(out["rank_loss"], 0.0)
    unnormalised = rrtf_loss(t([[-6.0, -4.0]]), t([[3, 1]], torch.long), t([[3.0, 0.0]]),
                             t([[True, False]], torch.bool), RankLossConfig(length_norm=False))
    assert close(unnormalised["rank_loss"], 3 * 2.0)      # sums: -4 > -6 by 2, gap 3


def _rrtf_ragged():
    # prompt 0: T, S, S; prompt 1: S, T and an empty slot (whose junk score must be ignored)
    logp = t([[-4.0, -2.0, -6.0], [-1.0, -3.0, 0.0]])
    lens = t([[2, 2, 2], [1, 1, 0]], torch.long)
    scores = t([[3.0, 3.0, 1.0], [2.0, 2.5, 9.0]])
    teacher = t([[True, False, False], [False, True, True]], torch.bool)
    return logp, lens, scores, teacher


@pytest.mark.parametrize("reduction, expected", [("pair", 1.5 / 3), ("prompt", 1.5 / 2), ("sum", 1.5)])
def test_rrtf_batch_ragged_and_reductions(reduction, expected):
    # p = [[-2, -1, -3], [-1, -3]]. Pairs: (T0,S1) tie 0.5 * 1; (T0,S2) gap 2 * 0; (T1,S0) gap 0.5 * 2.
    out = rrtf_loss(*_rrtf_ragged(), RankLossConfig(rank_reduction=reduction))
    assert int(out["pairs"]) == 3
    assert close(out["rank_loss"], expected)


@pytest.mark.parametrize("reduction, expected", [("token", 7 / 3), ("response", (2 + 3) / 2)])
def test_rrtf_ft_reductions(reduction, expected):
    out = rrtf_loss(*_rrtf_ragged(), RankLossConfig(ft_reduction=reduction))
    assert close(out["ft_loss"], expected)     # targets: best teacher of each prompt (4/2 tokens, 3/1 token)


def test_ft_min_score_skips_failing_targets():
    out = rrtf_loss(*_rrtf_ragged(), RankLossConfig(ft_min_score=3.0))   # prompt 1's teacher scores 2.5
    assert close(out["ft_loss"], 4 / 2)


def test_weights():
    cfg = RankLossConfig(rank_weight=2.0, ft_weight=0.5)
    out = rrtf_loss(*_rrtf_ragged(), cfg)
    assert close(out["loss"], 2.0 * out["rank_loss"] + 0.5 * out["ft_loss"])


def test_rrtf_gradient_pushes_teacher_up_student_down():
    logp = t([[-4.0, -3.0]]).requires_grad_()
    out = rrtf_loss(logp, t([[2, 3]], torch.long), t([[3.0, 1.0]]), t([[True, False]], torch.bool),
                    RankLossConfig(ft_weight=0.0))
    out["loss"].backward()
    assert logp.grad[0, 0] < 0 < logp.grad[0, 1]


# ---------------------------------------------------------------- RRHF

def _rrhf_ragged():
    logp = t([[-3.0, -1.0, -2.0], [-2.0, -8.0, 0.0]])
    lens = t([[1, 1, 1], [2, 4, 0]], torch.long)
    scores = t([[3.0, 2.0, 1.0], [1.0, 2.0, 5.0]])     # slot [1, 2] is empty: its score 5 is junk
    return logp, lens, scores, torch.zeros(2, 3, dtype=torch.bool)


@pytest.mark.parametrize("reduction, expected", [("pair", 4 / 4), ("prompt", 4 / 2), ("sum", 4.0)])
def test_rrhf_batch_ragged_by_hand(reduction, expected):
    # p0 = [-3, -1, -2]: pairs (0,1) 2, (0,2) 1, (1,2) 0; p1 = [-1, -2]: pair (1,0) relu(-1 - -2) = 1
    out = rrhf_loss(*_rrhf_ragged(), RankLossConfig(loss="rrhf", rank_reduction=reduction))
    assert int(out["pairs"]) == 4
    assert close(out["rank_loss"], expected)
    assert close(out["ft_loss"], (3 + 8) / (1 + 4))   # best of each prompt, per token


def test_rrhf_ties_give_no_pair():
    out = rrhf_loss(t([[-1.0, -5.0]]), t([[1, 1]], torch.long), t([[2.0, 2.0]]), torch.zeros(1, 2, dtype=torch.bool),
                    RankLossConfig(loss="rrhf"))
    assert int(out["pairs"]) == 0 and close(out["rank_loss"], 0.0)
    assert close(out["ft_loss"], 1.0)                 # a tie: the first (best-first order) is the target


# ---------------------------------------------------------------- table and config

def test_table_and_resolver():
    assert set(LOSSES) == {"rrtf", "rrhf"}
    assert get_loss("rrtf") is rrtf_loss
    assert get_loss("align.train.losses:rrhf_loss") is rrhf_loss
    with pytest.raises(KeyError, match="rrtf"):
        get_loss("rrft")


@pytest.mark.parametrize("field, value", [("rank_reduction", "mean"), ("ft_reduction", "pair"), ("tie_margin", -1.0)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        RankLossConfig(**{field: value})


@pytest.mark.parametrize("loss", ["rrtf", "rrhf"])
@pytest.mark.parametrize("reduction", ["pair", "prompt", "sum"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_nan_or_inf_in_an_empty_slot_stays_out_of_the_loss(loss, reduction, bad):
    """Masking selects rather than multiplies: 0 * inf and 0 * NaN are NaN."""
    logp = t([[-4.0, -3.0, bad]], torch.float32).requires_grad_()
    lengths, scores = t([[2, 3, 0]], torch.long), t([[3.0, 1.0, 0.0]])
    teacher = t([[True, False, False]], torch.bool)
    out = LOSSES[loss](logp, lengths, scores, teacher, RankLossConfig(loss=loss, rank_reduction=reduction))
    clean = LOSSES[loss](t([[-4.0, -3.0, 0.0]]), lengths, scores, teacher, RankLossConfig(loss=loss, rank_reduction=reduction))
    assert torch.isfinite(out["loss"]) and close(out["loss"], clean["loss"])
    out["loss"].backward()
    assert torch.isfinite(logp.grad[0, :2]).all() and logp.grad[0, :2].abs().sum() > 0
