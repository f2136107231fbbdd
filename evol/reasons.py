"""Why a generated problem was dropped: one table of reason codes, and a Rejection record.

WizardLM's elimination rules (arXiv:2304.12244 §3.2: no information gain, the model cannot
answer, too short, copies the prompt's words) plus the rules a code problem needs (signature
lost, reference fails, tests not discriminative, behaviour unchanged, duplicate). Stage stats
count rejections by these codes, per operator and round (`count_by`).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

REASONS: dict[str, str] = {
    # WizardLM's elimination rules
    "no_information_gain": "the evolved problem adds nothing over its parent",
    "refusal": "the model apologises or refuses instead of answering",
    "too_short": "the answer is too short to hold a problem, a solution and tests",
    "copies_template": "the answer copies words of the evolution prompt itself",
    # layout and code rules
    "bad_layout": "the answer does not follow the fixed layout (### Problem / ### Solution / ### Tests)",
    "signature_lost": "the problem or its solution lost the signature def <entry_point>(...)",
    "too_few_tests": "fewer usable assert lines than required",
    "reference_fails": "the reference solution fails its own tests (or does not compile)",
    "tests_not_discriminative": "a trivial solution passes every test",
    "behaviour_unchanged": "the parent's reference still passes every new test",
    "agreement_failed": "independently sampled solutions disagree with the tests (CodeT)",
    "duplicate": "the same problem exists already (exact, or near duplicate by MinHash)",
    "contaminated": "overlaps a benchmark test problem (evol/decontam.py)",
    # the programmatic path on built-in tasks
    "not_applicable": "the operator has no form for this problem",
    "too_deep": "the composition is deeper than allowed",
    "split_change": "the evolved task would change split (train / held-out)",
    "invalid_composition": "the composed task is not a usable task",
    "no_generator": "not a built-in task and no generate callable given",
}


@dataclass(frozen=True)
class Rejection:
    code: str     # a key of REASONS
    detail: str   # what exactly was wrong, for a human

    def __post_init__(self) -> None:
        if self.code not in REASONS:
            raise ValueError(f"unknown rejection code {self.code!r}; known: {', '.join(REASONS)}")

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


def count_by(rows: Iterable[dict[str, Any]], *keys: str) -> dict:
    """Nested counts of rows by `keys`, e.g. count_by(rejected, "round", "operator", "code")."""
    if len(keys) == 1:
        return dict(sorted(Counter(str(r[keys[0]]) for r in rows).items()))
    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(str(r[keys[0]]), []).append(r)
    return {k: count_by(v, *keys[1:]) for k, v in sorted(groups.items())}
