"""Training sets from ranked groups (`rank.records.RankedGroup`): plain dict rows, pure Python.

    rrtf  one row per prompt: {problem_id, prompt, responses, scores, roles}, teachers and students that
          form at least one pair (teacher score >= student score: on an equal outcome the teacher ranks
          higher, PanGu-Coder2 arXiv:2307.14936 §3.4); pairs with the teacher below are dropped, and so
          is a prompt left without a pair. The loss (align/train/losses.py) forms the pairs.
    rrhf  one row per prompt with all its responses (arXiv:2304.05302), same keys.
    dpo   {prompt, chosen, rejected}; `pairing` = "best_vs_worst" | "teacher_vs_student" | "all_pairs"
          (a table); chosen must score strictly above rejected by more than `min_gap`: a tie never pairs.
    sft   {prompt, completion}: rejection sampling, responses with status "passed" (best first,
          `per_prompt` of them, None = all distinct ones).

Every row holds the text the student is trained on, as it is sampled: `render_groups` first turns each
group's prompt and programs into the student template's training text (align.templates.training_text;
pangu: the spec in triple quotes, each program + "\\n"), and EOS is added at tokenisation.
Use: `build_rows("dpo", render_groups(groups, template, problems), pairing="all_pairs")`.
Test: `pytest tests/align/test_train_datasets.py`.
"""
from __future__ import annotations

import inspect
from itertools import combinations
from typing import Callable, Iterable

from dataclasses import replace

from rank.records import Problem, RankedGroup, ScoredResponse


def _ordered(group: RankedGroup) -> list[ScoredResponse]:
    """Best first; on an equal score the teacher first (stable, so the group's own order breaks the rest)."""
    return sorted(group.responses, key=lambda r: (r.score, r.role == "teacher"), reverse=True)


def render_groups(groups: Iterable[RankedGroup], template, problems: dict[str, Problem],
                  tokenizer=None) -> list[RankedGroup]:
    """The groups with prompt and programs replaced by the student's training text under `template`
    (an align.templates.Template; `tokenizer` for chat templates). `problems`: id -> Problem."""
    from align.templates import training_text
    out = []
    for g in groups:
        if g.problem_id not in problems:
            raise ValueError(f"ranked group {g.problem_id!r} has no problem in the run's problems")
        prompt, texts = training_text(template, problems[g.problem_id], [r.code for r in g.responses], tokenizer)
        out.append(replace(g, prompt=prompt, responses=[replace(r, code=t) for r, t in zip(g.responses, texts)]))
    return out


def _rank_row(group: RankedGroup, responses: list[ScoredResponse]) -> dict:
    return {"problem_id": group.problem_id, "prompt": group.prompt,
            "responses": [r.code for r in responses], "scores": [float(r.score) for r in responses],
            "roles": [r.role for r in responses]}


def rrtf_rows(groups: Iterable[RankedGroup]) -> list[dict]:
    """Per prompt, the teachers and students that form a pair with teacher score >= student score."""
    rows = []
    for g in groups:
        teachers = [r for r in g.responses if r.role == "teacher"]
        students = [r for r in g.responses if r.role == "student"]
        if not teachers or not students:
            continue
        best_teacher = max(r.score for r in teachers)
        worst_student = min(r.score for r in students)
        keep = {id(r) for r in teachers if r.score >= worst_student}
        keep |= {id(r) for r in students if r.score <= best_teacher}
        kept = [r for r in _ordered(g) if id(r) in keep]
        if any(r.role == "student" for r in kept):
            rows.append(_rank_row(g, kept))
    return rows


def rrhf_rows(groups: Iterable[RankedGroup], min_responses: int = 2) -> list[dict]:
    """Per prompt, all responses (groups with fewer than `min_responses` are skipped)."""
    return [_rank_row(g, _ordered(g)) for g in groups if len(g.responses) >= min_responses]


def _best_vs_worst(rs: list[ScoredResponse]) -> list[tuple[ScoredResponse, ScoredResponse]]:
    return [(rs[0], rs[-1])] if len(rs) >= 2 else []


def _teacher_vs_student(rs: list[ScoredResponse]) -> list[tuple[ScoredResponse, ScoredResponse]]:
    return [(t, s) for t in rs if t.role == "teacher" for s in rs if s.role == "student"]


def _all_pairs(rs: list[ScoredResponse]) -> list[tuple[ScoredResponse, ScoredResponse]]:
    return list(combinations(rs, 2))   # rs is best first: (better-or-equal, worse-or-equal)


Pairing = Callable[[list[ScoredResponse]], list[tuple[ScoredResponse, ScoredResponse]]]
DPO_PAIRINGS: dict[str, Pairing] = {
    "best_vs_worst": _best_vs_worst, "teacher_vs_student": _teacher_vs_student, "all_pairs": _all_pairs,
}


def dpo_rows(groups: Iterable[RankedGroup], pairing: str = "best_vs_worst", min_gap: float = 0.0) -> list[dict]:
    """(chosen, rejected) pairs from `DPO_PAIRINGS[pairing]` whose score gap is > `min_gap` (>= 0: a
    negative gap would let ties and reversed pairs in)."""
    from rank.plugins import resolve
    if min_gap < 0:
        raise ValueError(f"min_gap must be >= 0 (a negative gap pairs ties and reversed pairs), got {min_gap}")
    pair_fn = resolve(DPO_PAIRINGS, pairing, "DPO pairing")
    rows = []
    for g in groups:
        for chosen, rejected in pair_fn(_ordered(g)):
            if chosen.score - rejected.score > min_gap and chosen.code.strip() != rejected.code.strip():
                rows.append({"prompt": g.prompt, "chosen": chosen.code, "rejected": rejected.code})
    return rows


def sft_rows(groups: Iterable[RankedGroup], per_prompt: int | None = 1) -> list[dict]:
    """Rejection sampling: passed responses, best first, distinct code, at most `per_prompt` per prompt."""
    rows = []
    for g in groups:
        seen: set[str] = set()
        for r in _ordered(g):
            code = r.code.strip()
            if r.status != "passed" or not code or code in seen:
                continue
            seen.add(code)
            rows.append({"prompt": g.prompt, "completion": r.code})
            if per_prompt is not None and len(seen) >= per_prompt:
                break
    return rows


Builder = Callable[..., list[dict]]
BUILDERS: dict[str, Builder] = {"rrtf": rrtf_rows, "rrhf": rrhf_rows, "dpo": dpo_rows, "sft": sft_rows}


def build_rows(name: str, groups: Iterable[RankedGroup], **options) -> list[dict]:
    """Rows for training method `name` (a key of BUILDERS or "package.module:function")."""
    from rank.plugins import resolve
    return resolve(BUILDERS, name, "training-set builder")(list(groups), **options)


def check_builder_args(name: str, options: dict) -> None:
    """At config load: the builder exists, takes these options, and accepts their values (it runs on no
    groups, so each builder's own checks, such as dpo's min_gap >= 0, are the only ones)."""
    from rank.plugins import resolve
    fn = resolve(BUILDERS, name, "training-set builder")
    params = list(inspect.signature(fn).parameters)[1:]
    unknown = [k for k in options if k not in params]
    if unknown:
        from rank.plugins import suggest
        raise ValueError(f"train.dataset_args: {name} takes no option {unknown[0]!r}{suggest(unknown[0], params)}; "
                         f"its options: {', '.join(params)}")
    try:
        fn([], **options)
    except (TypeError, ValueError) as err:
        raise ValueError(f"train.dataset_args: {err}") from None
