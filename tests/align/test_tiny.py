"""The tiny base models: trains (loss falls), saves, reloads through Auto*, FIM tokens, cache reuse."""
from __future__ import annotations

import dataclasses
import random

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from align import tiny                                      # noqa: E402
from align.prompting import EOS, FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX, format_example   # noqa: E402
from evol import tasks as T                                 # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cfg = dataclasses.replace(tiny.PRESETS["test"], cache_dir=str(tmp_path_factory.mktemp("tiny")))
    logs: list[str] = []
    return cfg, tiny.build_tiny(cfg, log=logs.append), logs


def test_trains_and_saves(built):
    cfg, models, logs = built
    losses = models.info["losses"]
    assert models.built and len(losses) == cfg.teacher_steps
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5          # it learns
    assert any("steps/s" in line for line in logs)


def test_reloads_with_auto_classes_and_fim_tokens(built):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, models, _ = built
    tok = AutoTokenizer.from_pretrained(models.tokenizer_path)
    assert tok.eos_token == EOS and tok.pad_token == FIM_PAD and tok.pad_token_id != tok.eos_token_id
    for special in (EOS, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD):
        ids = tok(special)["input_ids"]
        assert ids == [tok.convert_tokens_to_ids(special)], special        # one token each
    doc = format_example("Keep the even numbers, then return the sum.\ndef f(xs):",
                         "def f(xs):\n    xs = [x for x in xs if x % 2 == 0]\n    return sum(xs)")
    assert tok.decode(tok(doc)["input_ids"]) == doc                      # lossless round trip
    student = AutoModelForCausalLM.from_pretrained(models.student_path)
    teacher = AutoModelForCausalLM.from_pretrained(models.teacher_path)
    assert type(student).__name__ == "GPTBigCodeForCausalLM" and student.config.multi_query
    assert student.config.vocab_size == len(tok)
    diff = sum((a - b).abs().sum().item() for a, b in zip(student.parameters(), teacher.parameters()))
    assert diff > 0                                                       # two different checkpoints
    x = torch.tensor([tok(doc)["input_ids"]])
    assert torch.isfinite(teacher(input_ids=x, labels=x).loss)


def test_cache_is_reused(built):
    cfg, first, _ = built
    logs: list[str] = []
    again = tiny.build_tiny(cfg, log=logs.append)
    assert not again.built and again.teacher_path == first.teacher_path
    assert any("reusing" in line for line in logs)
    other = dataclasses.replace(cfg, seed=cfg.seed + 1)
    assert other.root() != cfg.root()                                    # config changes the key
    threads = dataclasses.replace(cfg, threads=3)
    assert threads.root() == cfg.root()                                  # ... thread count does not


class _ScriptedBackend:
    """Answers problem i with the reference (i % 4 == 0, 2), a wrong function (1) or a syntax error (3)."""

    def __init__(self, problems):
        self.answers = [p.reference if i % 2 == 0 else "def f(xs):\n    return None\n" if i % 4 == 1
                        else "def f(:\n" for i, p in enumerate(problems)]

    def generate(self, prompts, params):
        assert params.temperature == 0 and params.n == 1                 # greedy pass@1
        return [[a] for a in self.answers]


def test_heldout_eval_runs_every_program_in_the_sandbox(monkeypatch):
    import align.generate

    held = T.generate_problems(4, "heldout", seed=0)
    monkeypatch.setattr(align.generate, "load_backend", lambda name, path, **kw: _ScriptedBackend(held))
    res = tiny.heldout_pass_at_1("unused", held)
    assert res["pass@1"] == 0.5 and res["n_problems"] == 4
    assert [r["samples"][0]["status"] for r in res["per_problem"]] == ["passed", "failed", "passed", "compile_error"]


def test_heldout_eval_of_a_built_model_is_greedy_and_consistent(built):
    _, models, _ = built
    held = T.generate_problems(3, "heldout", seed=0)
    first = tiny.heldout_pass_at_1(models.teacher_path, held, max_new_tokens=24)
    again = tiny.heldout_pass_at_1(models.teacher_path, held, max_new_tokens=24)
    codes = [r["samples"][0]["code"] for r in first["per_problem"]]
    assert codes == [r["samples"][0]["code"] for r in again["per_problem"]]          # greedy: deterministic
    assert all(EOS not in c for c in codes)
    passed = [r["samples"][0]["status"] == "passed" for r in first["per_problem"]]
    assert first["pass@1"] == sum(passed) / 3


def test_set_overrides_go_through_the_config_system():
    from align.config_loader import ConfigError

    cfg = tiny.config_from("test", ["n_layer=3", "lr=1e-4", "cache_dir=/tmp/x"])
    assert (cfg.n_layer, cfg.lr, cfg.cache_dir, cfg.n_embd) == (3, 1e-4, "/tmp/x", tiny.PRESETS["test"].n_embd)
    with pytest.raises(ConfigError, match=r"n_layers: unknown key \(did you mean 'n_layer'\?\)"):
        tiny.config_from("test", ["n_layers=3"])
    with pytest.raises(ConfigError, match="n_layer: expected an integer, got str 'three'"):
        tiny.config_from("test", ["n_layer=three"])
    with pytest.raises(ConfigError, match="student_steps <= teacher_steps"):
        tiny.config_from("test", ["student_steps=100"])


def test_fim_transform_keeps_the_document():
    doc = format_example("Square each, then return the sum.\ndef f(xs):", "def f(xs):\n    return 0")
    body = doc[: -len(EOS)]
    rng = random.Random(0)
    for spm in (0.0, 1.0):
        for _ in range(20):
            out = tiny.fim_transform(doc, rng, spm)
            assert out.startswith(FIM_PREFIX) and out.endswith(EOS)
            head, middle = out[len(FIM_PREFIX): -len(EOS)].split(FIM_MIDDLE)
            if spm:   # <pre><suf>suffix<mid>prefix+middle
                assert head.startswith(FIM_SUFFIX)
                assert middle + head[len(FIM_SUFFIX):] == body
            else:     # <pre>prefix<suf>suffix<mid>middle
                prefix, suffix = head.split(FIM_SUFFIX)
                assert prefix + middle + suffix == body


def test_corpus_is_train_split_only():
    cfg = tiny.PRESETS["test"]
    docs = tiny.corpus(cfg)
    held = {p.prompt for p in T.generate_problems(100, "heldout", seed=0)}
    assert len(docs) == cfg.n_train_problems and all(d.endswith(EOS) for d in docs)
    assert not any(h in d for d in docs for h in held)


def test_bad_config_raises_value_error():
    with pytest.raises(ValueError):
        tiny.TinyConfig(student_steps=10, teacher_steps=5)
    with pytest.raises(ValueError):
        tiny.TinyConfig(n_embd=130, n_head=4)
