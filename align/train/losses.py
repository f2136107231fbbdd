"""Ranking losses on executed-test feedback: RRTF (arXiv:2307.14936 §3.4) and RRHF (arXiv:2304.05302).

Each loss is a small pure function of per-response statistics laid out per prompt group:

    logp_sum  [B, K]  sum of log P(y_t | x, y_<t) over the response's own tokens (EOS included)
    lengths   [B, K]  true number of response tokens (0 = empty slot: groups are ragged, K = max k)
    scores    [B, K]  execution score, higher is better
    teacher   [B, K]  bool, True for teacher responses (RRTF only)

and returns a dict: `loss` (scalar, what is minimised), `rank_loss`, `ft_loss`, `pairs` (number of
ranked pairs). Scores are compared within a prompt only. The model forward that produces these
statistics lives in `align/train/packing.py`; the trainer in `align/train/rank_trainer.py`.

Length normalisation: p = logp_sum / lengths with each response's *true* length (never a padded
length, the bug of the public RRHF code), so responses of different lengths compete fairly.

Reductions (configurable, `RankLossConfig`):
  rank_reduction  "pair"   (default) mean over all ranked pairs in the batch: every pair weighs the same;
                  "prompt" mean over prompts having >= 1 pair of the per-prompt sum (the paper's Σ per x);
                  "sum"    plain sum over the batch (the paper's formula as written; scales with batch size).
  ft_reduction    "token"  (default) mean NLL over all target tokens in the batch (standard causal-LM CE);
                  "response" mean over target responses of each one's per-token mean NLL.

Ties (RRTF): the paper ranks the teacher above the student on an equal outcome but gives the pair a
weight r_tea - r_stu = 0, i.e. no signal. We give a tie the gap `tie_margin` (default 0.5). The scores
of rank's "pangu" strategy step by 1 per outcome level (compile error < runtime error < partial <
pass; a partial pass adds its passed fraction, < 1), so 0.5 is half a level: a tie still pulls the
student's likelihood below the teacher's, but half as hard as a difference of one outcome level. It
is an absolute gap in score units, not relative to the batch, so a pair's weight never depends on what
else is in the batch (with the `pass_rate` strategy, scores in [-1, 1], use a smaller one such as 0.05).
Set `tie_margin=0` to ignore ties. Pairs where the teacher scores *below* the student contribute
nothing (they are dropped upstream too). RRHF ties give no pair, as in its paper.

Test: `pytest tests/align/test_losses.py`.
"""
from __future__ import annotations

from typing import Callable

import torch

# Typed in a module without torch, so a config is validated without importing it.
from align.train.config import FT_REDUCTIONS, RANK_REDUCTIONS, RankLossConfig  # noqa: F401


def sequence_scores(logp_sum: torch.Tensor, lengths: torch.Tensor, length_norm: bool = True) -> torch.Tensor:
    """p [B, K] = logp_sum / true length (empty slots give 0; they are masked out by callers)."""
    if not length_norm:
        return logp_sum
    return logp_sum / lengths.clamp(min=1).to(logp_sum.dtype)


def reduce_rank(pair_loss: torch.Tensor, pair_mask: torch.Tensor, reduction: str) -> torch.Tensor:
    """pair_loss, pair_mask [B, K, K] (i better than j) -> scalar, per `reduction` (module docstring).

    Masked by selection, not multiplication: a NaN or inf in an empty slot (0 * inf = NaN) stays out.
    """
    pair_loss = torch.where(pair_mask, pair_loss, torch.zeros_like(pair_loss))
    if reduction == "sum":
        return pair_loss.sum()
    if reduction == "pair":
        return pair_loss.sum() / pair_mask.sum().clamp(min=1)
    per_prompt = pair_loss.sum(dim=(1, 2))
    has_pair = pair_mask.flatten(1).any(dim=1)
    return per_prompt.sum() / has_pair.sum().clamp(min=1)


def fine_tune_loss(logp_sum: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor,
                   reduction: str = "token") -> torch.Tensor:
    """Cross-entropy on the target responses. target [B, K] bool; scalar result (0 if no target)."""
    target = target & (lengths > 0)
    nll = torch.where(target, -logp_sum, torch.zeros_like(logp_sum))   # select: see reduce_rank
    if reduction == "token":
        return nll.sum() / (lengths * target).sum().clamp(min=1)
    per_response = nll / lengths.clamp(min=1)
    return per_response.sum() / target.sum().clamp(min=1)


def ft_target(scores: torch.Tensor, allowed: torch.Tensor, cfg: RankLossConfig) -> torch.Tensor:
    """The fine-tuning target: best allowed response per prompt, if it reaches `cfg.ft_min_score`."""
    best = best_of(scores, allowed)
    return best if cfg.ft_min_score is None else best & (scores >= cfg.ft_min_score)


def best_of(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """[B, K] bool: the first highest-scoring allowed slot of each prompt (none if no slot is allowed)."""
    masked = scores.masked_fill(~allowed, float("-inf"))
    best = torch.zeros_like(allowed)
    idx = masked.argmax(dim=1, keepdim=True)   # argmax returns the first maximum: rows come best first
    best.scatter_(1, idx, True)
    return best & allowed


def _combine(cfg: RankLossConfig, rank: torch.Tensor, ft: torch.Tensor, pairs: torch.Tensor) -> dict:
    return {"loss": cfg.rank_weight * rank + cfg.ft_weight * ft,
            "rank_loss": rank, "ft_loss": ft, "pairs": pairs.sum()}


def rrtf_loss(logp_sum: torch.Tensor, lengths: torch.Tensor, scores: torch.Tensor,
              teacher: torch.Tensor, cfg: RankLossConfig) -> dict:
    """PanGu-Coder2 RRTF (arXiv:2307.14936 §3.4). Shapes [B, K] as in the module docstring.

    pairs (i teacher, j student, same prompt, r_i >= r_j), gap = r_i - r_j, or `cfg.tie_margin` on a tie;
    rank_loss = reduce(gap * max(0, p_j - p_i))     (= -gap * min(0, p_tea - p_stu))
    ft_loss   = CE on the best-scoring teacher response of each prompt.
    """
    valid = lengths > 0
    teacher = teacher & valid
    student = ~teacher & valid
    p = sequence_scores(logp_sum, lengths, cfg.length_norm)
    gap = scores[:, :, None] - scores[:, None, :]                        # [B, K(i), K(j)]
    pair_mask = teacher[:, :, None] & student[:, None, :] & (gap >= 0)
    weight = torch.where(gap > 0, gap, torch.full_like(gap, cfg.tie_margin))
    pair_loss = weight * torch.relu(p[:, None, :] - p[:, :, None])
    if cfg.tie_margin == 0:                  # a zero-weight tie is no pair: keep the pair count honest
        pair_mask = pair_mask & (gap > 0)
    rank = reduce_rank(pair_loss, pair_mask, cfg.rank_reduction)
    ft = fine_tune_loss(logp_sum, lengths, ft_target(scores, teacher, cfg), cfg.ft_reduction)
    return _combine(cfg, rank, ft, pair_mask)


def rrhf_loss(logp_sum: torch.Tensor, lengths: torch.Tensor, scores: torch.Tensor,
              teacher: torch.Tensor, cfg: RankLossConfig) -> dict:
    """RRHF (arXiv:2304.05302). Shapes [B, K] as in the module docstring; `teacher` is ignored.

    pairs (i, j, same prompt, r_i > r_j; ties give no pair), rank_loss = reduce(max(0, p_j - p_i)),
    ft_loss = CE on the best response of each prompt (the first one on a tie: rows come best first).
    """
    valid = lengths > 0
    p = sequence_scores(logp_sum, lengths, cfg.length_norm)
    gap = scores[:, :, None] - scores[:, None, :]
    pair_mask = valid[:, :, None] & valid[:, None, :] & (gap > 0)
    pair_loss = torch.relu(p[:, None, :] - p[:, :, None])
    rank = reduce_rank(pair_loss, pair_mask, cfg.rank_reduction)
    ft = fine_tune_loss(logp_sum, lengths, ft_target(scores, valid, cfg), cfg.ft_reduction)
    return _combine(cfg, rank, ft, pair_mask)


LossFn = Callable[..., dict]
LOSSES: dict[str, LossFn] = {"rrtf": rrtf_loss, "rrhf": rrhf_loss}


def get_loss(name: str) -> LossFn:
    """A loss by table name, or a user's own as "package.module:function" (same signature)."""
    from rank.plugins import resolve
    return resolve(LOSSES, name, "ranking loss")
