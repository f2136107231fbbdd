"""RankTrainer, its collator and train_rank on a tiny random-init GPTBigCode (CPU).

Run: .venv/bin/python -m pytest tests/align/test_rank_trainer.py
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from align.train.losses import RankLossConfig  # noqa: E402
from align.train.rank_trainer import RankTrainer, rank_collator, train_rank, truncate  # noqa: E402

# The locally trained tokenizer of the TRL tests, loaded by path so no package layout is assumed.
_spec = importlib.util.spec_from_file_location("_trl_helpers", Path(__file__).with_name("test_trl_train.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

ROWS = [
    {"prompt": "Add two numbers.\ndef add(a, b):", "responses": ["def add(a, b):\n    return a + b", "def add(a, b):\n    return a - b",
                                                                 "def add(a, b) return"],
     "scores": [3.0, 2.0, 0.0], "roles": ["teacher", "student", "student"]},
    {"prompt": "Reverse a list.\ndef rev(xs):", "responses": ["def rev(xs):\n    return xs[::-1]", "def rev(xs):\n    return xs"],
     "scores": [3.0, 3.0], "roles": ["teacher", "student"]},
    {"prompt": "Square a number.\ndef sq(x):", "responses": ["def sq(x):\n    return x * x", "def sq(x):\n    return x + x"],
     "scores": [3.0, 2.5], "roles": ["teacher", "student"]},
    {"prompt": "Is n even?\ndef even(n):", "responses": ["def even(n):\n    return n % 2 == 0", "def even(n):\n    return n % 2",
                                                         "def even(n):\n    raise ValueError", "even = 3"],
     "scores": [3.0, 2.0, 1.0, 0.0], "roles": ["teacher", "student", "student", "student"]},
]


@pytest.fixture(scope="module")
def tokenizer():
    return helpers.make_tokenizer()


def tiny_model(vocab):
    torch.manual_seed(0)
    cfg = transformers.GPTBigCodeConfig(n_layer=2, n_embd=32, n_head=4, multi_query=True, vocab_size=vocab,
                                        n_positions=256, bos_token_id=0, eos_token_id=0)
    return transformers.GPTBigCodeForCausalLM(cfg)


def args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=2, per_device_eval_batch_size=2,
                learning_rate=5e-3, num_train_epochs=3, logging_steps=2, save_strategy="no", report_to=[],
                use_cpu=True, seed=0, remove_unused_columns=True)    # True on purpose: the trainer must undo it
    return transformers.TrainingArguments(**{**base, **kw})


def test_collator_keeps_the_text_appends_eos_and_pads_ragged(tokenizer):
    batch = rank_collator(tokenizer, max_length=64)(ROWS[:2])
    eos = tokenizer.eos_token_id
    assert batch["response_ids"].shape[:2] == (2, 3) and batch["response_lens"][1, 2] == 0
    p = int(batch["prompt_lens"][0])
    assert tokenizer.decode(batch["prompt_ids"][0, :p]) == ROWS[0]["prompt"]     # the rows hold the model's text
    n = int(batch["response_lens"][0, 0])
    assert batch["response_ids"][0, 0, n - 1] == eos
    assert tokenizer.decode(batch["response_ids"][0, 0, :n - 1]) == ROWS[0]["responses"][0]
    assert batch["teacher"].tolist() == [[True, False, False], [True, False, False]]
    assert batch["scores"][0].tolist() == [3.0, 2.0, 0.0]


def test_truncation_never_empties_a_response():
    prompt, responses = truncate(list(range(50)), [list(range(40)), [7]], max_length=32)
    assert len(prompt) == 16 and prompt[-1] == 49                       # cut at the start, down to half
    assert [len(r) for r in responses] == [16, 1] and all(len(prompt) + len(r) <= 32 for r in responses)
    prompt, responses = truncate(list(range(10)), [list(range(5))], max_length=32)
    assert len(prompt) == 10 and len(responses[0]) == 5                 # nothing to cut
    with pytest.raises(ValueError):
        truncate([1], [[2]], max_length=3)


def test_collator_rejects_bad_rows(tokenizer):
    with pytest.raises(ValueError, match="scores"):
        rank_collator(tokenizer)([{"prompt": "x", "responses": ["a", "b"], "scores": [1.0]}])
    with pytest.raises(ValueError, match="roles"):
        rank_collator(tokenizer)([{"prompt": "x", "responses": ["a"], "scores": [1.0], "roles": ["teachr"]}])


@pytest.mark.parametrize("loss", ["rrtf", "rrhf"])
def test_training_reduces_the_loss_and_logs_parts(tokenizer, tmp_path, loss):
    # a datasets.Dataset once: its text columns must reach the collator (remove_unused_columns)
    data = ROWS if loss == "rrtf" else pytest.importorskip("datasets").Dataset.from_list(ROWS)
    trainer = RankTrainer(model=tiny_model(len(tokenizer)), args=args(tmp_path), train_dataset=data,
                          eval_dataset=data, processing_class=tokenizer, loss_config=RankLossConfig(loss=loss))
    assert trainer.args.remove_unused_columns is False
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < before
    assert trainer.layout == "prefix"
    logged = [h for h in trainer.state.log_history if "rank_loss" in h and "loss" in h]
    assert logged and {"ft_loss", "pairs"} <= logged[0].keys() and logged[0]["pairs"] > 0


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("base")
    tiny_model(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_train_rank_saves_model_and_tokenizer(model_dir, tmp_path):
    out = tmp_path / "out"
    metrics = train_rank(str(model_dir), ROWS, str(out), RankLossConfig(), {"per_device_train_batch_size": 2,
                         "max_steps": 2, "learning_rate": 1e-3, "save_strategy": "no", "logging_steps": 1})
    assert metrics["train_runtime"] > 0 and metrics["global_step"] == 2 and metrics["layout"] == "prefix" and "last_rank_loss" in metrics
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
    transformers.AutoModelForCausalLM.from_pretrained(out)
    from rank.records import read_jsonl    # the curves align.report draws: one row per logged step
    steps = [h for h in read_jsonl(out / "log_history.jsonl") if "rank_loss" in h]
    assert [h["step"] for h in steps] == [1, 2] and all("loss" in h and "ft_loss" in h for h in steps)


def test_train_rank_stops_and_resumes_from_checkpoint(model_dir, tmp_path):
    """2 steps, stop, rerun with max_steps=3: the second run starts from checkpoint-2 and ends at step 3."""
    out = tmp_path / "out"
    cfg = {"per_device_train_batch_size": 2, "learning_rate": 1e-3, "save_strategy": "steps", "save_steps": 1,
           "save_total_limit": 1}
    first = train_rank(str(model_dir), ROWS, str(out), RankLossConfig(), {**cfg, "max_steps": 2})
    assert first["global_step"] == 2 and first["resumed_from"] is None and (out / "checkpoint-2").is_dir()
    second = train_rank(str(model_dir), ROWS, str(out), RankLossConfig(), {**cfg, "max_steps": 3})
    assert second["resumed_from"].endswith("checkpoint-2") and second["global_step"] == 3
    assert second["last_pairs"] > 0           # step 3 really trained, on the rank loss
    transformers.AutoModelForCausalLM.from_pretrained(out)


def test_lora_rrtf_trains_the_adapter_only_and_saves_a_merged_model(model_dir, tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "lora"
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "lora_dropout": 0.0}
    metrics = train_rank(str(model_dir), ROWS, str(out), RankLossConfig(loss="rrtf"),
                         {"per_device_train_batch_size": 2, "max_steps": 3, "learning_rate": 1e-2,
                          "save_strategy": "no"}, lora=lora)
    assert metrics["global_step"] == 3 and metrics["last_pairs"] > 0 and metrics["layout"] == "prefix"
    assert (out / "adapter" / "adapter_config.json").exists() and not (out / "adapter_config.json").exists()
    base = transformers.AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    merged = transformers.AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert merged.keys() == base.keys()       # a plain model: no lora_A/lora_B left
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all("c_attn.weight" in k for k in changed)   # only what the adapter merged into


def test_gradient_checkpointing_keeps_prefix(tokenizer, tmp_path):
    trainer = RankTrainer(model=tiny_model(len(tokenizer)), args=args(tmp_path, max_steps=1, activation_checkpointing=True),
                          train_dataset=ROWS, processing_class=tokenizer, loss_config={"loss": "rrtf"})
    trainer.train()
    assert trainer.layout == "prefix"


def test_model_init_kwargs_reach_from_pretrained(model_dir, tmp_path):
    """dtype / attn_implementation pass through to from_pretrained (bf16 + FlashAttention on GPUs)."""
    import json

    out = tmp_path / "out64"
    train_rank(str(model_dir), ROWS, str(out), RankLossConfig(), {"per_device_train_batch_size": 2, "max_steps": 1},
               model_init_kwargs={"dtype": "float64", "attn_implementation": "eager"})
    assert json.loads((out / "config.json").read_text())["dtype"] == "float64"
