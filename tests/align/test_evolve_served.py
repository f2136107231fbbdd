"""Evol-Instruct in the loop with a teacher served on localhost through the `openai` backend.

The tiny teacher writes poor problems, so this shows the path works end to end (HTTP server ->
openai backend -> evol -> sandbox verification -> rejection codes -> training on what is kept),
not that evolution succeeds; tests/evol/test_evolve.py checks verification with scripted answers.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from evol.reasons import REASONS

MBPP = Path(__file__).parents[2].parent / "shared/data/mbpp/mbpp.jsonl"
SMALL = ["data.limit=4", "data.n_heldout=4", "evolve.rounds=1", "models.student.sample.n=2",
         "models.teachers.0.sample.n=2", "models.student.sample.max_new_tokens=48",
         "models.teachers.0.sample.max_new_tokens=48", "train.args.num_train_epochs=1",
         "train.args.per_device_train_batch_size=4", "eval.max_new_tokens=32", "eval.benchmarks=[]",
         "rank.strategy=pass_rate"]


@pytest.fixture(scope="module")
def long_context_teacher(tmp_path_factory, served_model_builder) -> Path:
    """The tiny teacher with its 256 learned positions tiled to 2048: evolution prompts are longer
    than anything it was trained on, and a served model must accept them without an index error."""
    import torch
    from transformers import GPTBigCodeForCausalLM

    out = served_model_builder(tmp_path_factory.mktemp("served-long") / "teacher")
    model = GPTBigCodeForCausalLM.from_pretrained(out)
    old = model.transformer.wpe.weight.data
    model.config.n_positions = 2048
    wpe = torch.nn.Embedding(2048, old.shape[1])
    wpe.weight.data = old.repeat(2048 // old.shape[0] + 1, 1)[:2048].clone()
    model.transformer.wpe = wpe
    model.save_pretrained(out)
    return out


@pytest.mark.slow
@pytest.mark.skipif(not MBPP.exists(), reason=f"MBPP not found at {MBPP}")
def test_rrtf_evolves_mbpp_with_a_served_teacher_and_trains(long_context_teacher, serve, tmp_path):
    from align.recipes import rrtf

    run_dir = tmp_path / "run"
    with serve(long_context_teacher, tmp_path / "serve.log") as server:
        rrtf.main(["--base", "tiny", "--run-dir", str(run_dir), f"data.source=mbpp:{MBPP}@train", *SMALL,
                   f"evolve.model.ref={server.model}", "evolve.model.backend=openai", "evolve.model.template=chat",
                   f"evolve.model.options.base_url={server.base_url}", "evolve.model.options.api_key_env=null",
                   f"evolve.model.options.cache_dir={tmp_path / 'cache'}", "evolve.model.sample.max_new_tokens=64",
                   "evolve.framing=contest"])
    rejected = [json.loads(x) for x in (run_dir / "rejected.jsonl").read_text().splitlines()]
    problems = [json.loads(x) for x in (run_dir / "problems.jsonl").read_text().splitlines()]
    assert len(rejected) + sum(p["lineage"]["round"] == 1 for p in problems) == 4    # every seed was evolved once
    for r in rejected:          # the served model answered each prompt; each rejection has a code and detail
        assert r["code"] in REASONS and r["detail"] and "answer" in r and r["round"] == 1
    assert all(p["meta"]["tests_verified"] in ("reference", "agreement") for p in problems if p["lineage"]["round"])
    stats = json.loads((run_dir / "stages/problems.json").read_text())["stats"]
    assert sum(n for ops in stats["rejected"]["1"].values() for n in ops.values()) == len(rejected)
    assert (run_dir / "train/rrtf").exists() and (run_dir / "decontamination.json").exists()
    assert "rejected" in (run_dir / "report.md").read_text()


@pytest.mark.slow
def test_self_instruct_with_a_served_question_and_test_writer(long_context_teacher, serve, tmp_path):
    """Questions and tests written by a model behind an OpenAI-compatible server (the tiny teacher
    writes no usable question, so the funnel is honest about it), the tiny teacher solving."""
    from align.recipes import self_instruct

    run_dir = tmp_path / "run"
    with serve(long_context_teacher, tmp_path / "serve.log") as server:
        served = [f"ref={server.model}", "backend=openai", "template=chat", f"options.base_url={server.base_url}",
                  "options.api_key_env=null", f"options.cache_dir={tmp_path / 'cache'}", "sample.max_new_tokens=64"]
        funnel = self_instruct.main(["--run-dir", str(run_dir), "questions.generator=model", "questions.n=10",
                                     "tests.generator=model", *(f"questions.model.{s}" for s in served),
                                     *(f"tests.model.{s}" for s in served), "solve.model.sample.n=2", "num_cpus=2"])
    answers = [json.loads(x) for f in sorted((run_dir / "questions-gen.shards").rglob("*.jsonl"))
               for x in f.read_text().splitlines()]
    assert len(answers) == 2 and all(isinstance(a["text"], str) for a in answers)   # 10 questions, 5 per prompt
    assert funnel["questions"] >= funnel["after_dedup"] >= funnel["with_usable_tests"] >= funnel["tests_verified"]
    assert json.loads((run_dir / "funnel.json").read_text()) == funnel
