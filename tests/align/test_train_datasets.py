"""Training sets from ranked groups (align/train/datasets.py): pure Python, no torch."""
from __future__ import annotations

import subprocess
import sys

import pytest

from align.train.datasets import BUILDERS, DPO_PAIRINGS, build_rows, dpo_rows, rrhf_rows, rrtf_rows, sft_rows
from rank.records import RankedGroup, ScoredResponse


def resp(code, score, role="student", status=None):
    status = status or {3.0: "passed", 0.0: "compile_error"}.get(score, "partial")
    return ScoredResponse(candidate_id=code, model=role, role=role, code=code, score=score, status=status)


def group(*responses, pid="p1", prompt="Add two numbers.\ndef add(a, b):"):
    return RankedGroup(problem_id=pid, prompt=prompt, strategy="pangu", responses=list(responses))


def test_rrtf_keeps_pairs_with_teacher_at_least_as_good_and_ties():
    g = group(resp("t", 2.5, "teacher"), resp("s_tie", 2.5), resp("s_low", 1.0), resp("s_high", 3.0))
    (row,) = rrtf_rows([g])
    assert row["prompt"] == g.prompt                           # as rendered by render_groups
    assert row["responses"] == ["t", "s_tie", "s_low"]         # s_high beats every teacher: no pair, dropped
    assert row["scores"] == [2.5, 2.5, 1.0]
    assert row["roles"] == ["teacher", "student", "student"]   # on a tie the teacher ranks first


def test_rrtf_drops_teacher_in_no_pair_and_prompts_without_pairs():
    g = group(resp("t_bad", 0.0, "teacher"), resp("t_good", 3.0, "teacher"), resp("s", 2.0))
    (row,) = rrtf_rows([g])
    assert row["responses"] == ["t_good", "s"]                 # t_bad scores below every student
    assert rrtf_rows([group(resp("t", 1.0, "teacher"), resp("s", 3.0))]) == []
    assert rrtf_rows([group(resp("t", 3.0, "teacher"))]) == []  # no student


def test_rrhf_lists_all_responses_best_first():
    g = group(resp("b", 1.0), resp("a", 3.0, "teacher"), resp("c", 0.0))
    (row,) = rrhf_rows([g, group(resp("alone", 3.0), pid="p2")])
    assert row["responses"] == ["a", "b", "c"] and row["scores"] == [3.0, 1.0, 0.0]


def test_dpo_pairings_and_ties():
    g = group(resp("t", 3.0, "teacher"), resp("s1", 3.0), resp("s2", 1.0), resp("s3", 0.0))
    assert dpo_rows([g], "best_vs_worst") == [{"prompt": g.prompt, "chosen": "t", "rejected": "s3"}]
    tvs = dpo_rows([g], "teacher_vs_student")
    assert [(r["chosen"], r["rejected"]) for r in tvs] == [("t", "s2"), ("t", "s3")]   # tie t/s1: no pair
    allp = dpo_rows([g], "all_pairs")
    assert len(allp) == 5                                        # 6 pairs minus the tie
    assert all(r["chosen"] != r["rejected"] for r in allp)
    assert len(dpo_rows([g], "all_pairs", min_gap=1.0)) == 4     # gaps 2, 3, 2, 3 survive; s2-s3 (1) does not
    assert dpo_rows([group(resp("a", 2.0), resp("b", 2.0))], "best_vs_worst") == []
    assert set(DPO_PAIRINGS) == {"best_vs_worst", "teacher_vs_student", "all_pairs"}


def test_sft_best_of_passed_only():
    g = group(resp("\ndef add(a, b):\n    return a + b\n\n", 3.0), resp("def add(a, b): return a+b", 3.0, "teacher"),
              resp("x", 2.0))
    (row,) = sft_rows([g])
    assert row == {"prompt": g.prompt, "completion": "def add(a, b): return a+b"}
    assert len(sft_rows([g], per_prompt=None)) == 2
    assert sft_rows([group(resp("x", 2.0))]) == []


def test_build_rows_table_and_errors():
    g = group(resp("t", 3.0, "teacher"), resp("s", 1.0))
    assert set(BUILDERS) == {"rrtf", "rrhf", "dpo", "sft"}
    assert build_rows("dpo", [g], pairing="teacher_vs_student") == dpo_rows([g], "teacher_vs_student")
    with pytest.raises(KeyError, match="rrtf"):
        build_rows("rrft", [g])
    with pytest.raises(KeyError, match="all_pairs"):
        dpo_rows([g], "all_pair")


def test_no_torch_at_import():
    code = "import sys, align.train.datasets; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
