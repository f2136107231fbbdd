"""The self-instruct job end to end on the embedded default (tiny teacher solves built-in questions)."""
from __future__ import annotations

import json

import pytest

from align.recipes import self_instruct

SMALL = ["questions.n=40", "solve.model.sample.n=4", "num_cpus=2"]


def test_config_errors_are_caught_before_anything_runs(capsys):
    with pytest.raises(SystemExit) as e:
        self_instruct.main(["questions.generator=model"])
    assert e.value.code == 2 and "questions.model is not set" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        self_instruct.main(["solve.shard_sise=3"])
    assert "shard_size" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_self_instruct_funnel_datasets_and_resume(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    run_dir = tmp_path / "run"
    funnel = self_instruct.main(["--run-dir", str(run_dir), "--push-to-hub", str(tmp_path / "hub"), *SMALL])
    out = capsys.readouterr().out
    assert "with a passing solution" in out and "Code Llama" in out
    assert funnel["questions"] == 40 >= funnel["after_dedup"] >= funnel["with_usable_tests"] \
        >= funnel["with_passing_solution"] >= funnel["tests_verified"] > 0
    assert json.loads((run_dir / "funnel.json").read_text()) == funnel
    sft = datasets.load_dataset(str(run_dir / "datasets/sft"))["train"]
    assert sft.num_rows == funnel["sft_rows"] == funnel["tests_verified"]
    dpo = datasets.load_dataset(str(tmp_path / "hub/dpo"))["train"]          # the pushed copy opens too
    assert dpo.num_rows == funnel["dpo_pairs"] and set(dpo.column_names) >= {"prompt", "chosen", "rejected"}
    problems = datasets.load_dataset(str(run_dir / "datasets/problems"))["train"]
    assert {json.loads(m)["tests_verified"] for m in problems["meta"]} == {"reference"}
    card = (run_dir / "datasets/sft/README.md").read_text()
    assert "with_passing_solution" in card and "## Decontamination" in card and "humaneval" in card

    again = self_instruct.main(["--run-dir", str(run_dir), *SMALL])
    assert again == funnel
    assert "stages skipped: questions, dedup, tests, solve, execute, select" in capsys.readouterr().out
