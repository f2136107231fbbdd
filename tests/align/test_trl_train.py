"""DPO and SFT through TRL on a tiny random-init GPTBigCode (StarCoder's architecture), on CPU.

    .venv/bin/python -m pytest tests/align/test_trl_train.py
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from align.prompting import EOS, format_prompt  # noqa: E402
from align.train import trl_train  # noqa: E402

# Small, fast, and the same code path as a real run: TRL's own defaults except what CPU needs.
FAST = {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 64, "save_strategy": "no",
        "gradient_checkpointing": False, "learning_rate": 1e-3}


def make_tokenizer():
    """A byte-level BPE trained here in ~0.1 s (align.tiny's recipe) on the test rows' kind of code:
    nothing downloaded, nothing read from outside the repository."""
    from align.tiny import train_tokenizer

    docs = [r["prompt"] + r["chosen"] + r["rejected"] for r in pair_rows(50)]
    docs += ["def add(a, b):\n    return a + b\n", "def rev(xs):\n    return xs[::-1]\n", "raise ValueError"]
    return train_tokenizer(docs, vocab_size=400)


def make_tiny_model(path: Path) -> Path:
    """A 2-layer multi-query GPTBigCode (StarCoder's class) with a locally trained tokenizer next to it."""
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = GPTBigCodeConfig(n_layer=2, n_embd=64, n_head=4, multi_query=True, vocab_size=len(tok),
                           n_positions=256, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id)
    GPTBigCodeForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def pair_rows(n: int = 8) -> list[dict]:
    return [{"prompt": format_prompt(f"Return x plus {i}.\ndef f(x):"),
             "chosen": f"def f(x):\n    return x + {i}\n",
             "rejected": f"def f(x):\n    return x - {i}\n"} for i in range(n)]


def sft_rows(n: int = 8) -> list[dict]:
    return [{"prompt": r["prompt"], "completion": r["chosen"]} for r in pair_rows(n)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _reload(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.eos_token == EOS
    return model


def _weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_dpo_trains_saves_and_reloads(tiny_model, tmp_path):
    metrics = trl_train.train_dpo(tiny_model, pair_rows(), tmp_path / "dpo", FAST)
    assert metrics["global_step"] == 2
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["last_loss"])
    before, after = _weights(_reload(tiny_model)), _weights(_reload(tmp_path / "dpo"))
    assert any(not torch.equal(before[k], after[k]) for k in before), "DPO changed no weight"


def test_dpo_with_explicit_reference_model(tiny_model, tmp_path):
    metrics = trl_train.train_dpo(tiny_model, pair_rows(4), tmp_path / "dpo", {**FAST, "max_steps": 1},
                                  ref_model_path=tiny_model)
    assert math.isfinite(metrics["train_loss"])


def test_sft_packs_and_masks_the_prompt(tiny_model, tmp_path):
    trainer = trl_train.sft_trainer(tiny_model, sft_rows(), tmp_path / "sft", {**FAST, "packing": True})
    assert trainer.args.packing and trainer.args.bf16 is False
    tok = trainer.processing_class
    prompt_len = len(tok(sft_rows(1)[0]["prompt"])["input_ids"])
    row = trainer.train_dataset[0]
    assert len(row["seq_lengths"]) > 1, "packing put one row per sequence"
    # Completion-only loss: each packed document's prompt tokens are masked, its code and EOS are not.
    start = 0
    for length in row["seq_lengths"]:
        labels = row["labels"][start:start + length]
        assert labels[:prompt_len] == [-100] * prompt_len
        assert labels[prompt_len:] == row["input_ids"][start + prompt_len:start + length]
        assert labels[-1] == tok.eos_token_id
        start += length
    metrics = trainer.train()
    assert math.isfinite(metrics.training_loss)


def test_sft_completion_ends_with_one_eos(tiny_model, tmp_path):
    rows = [{"prompt": format_prompt("p"), "completion": "def f():\n    pass\n\n" + EOS}]
    trainer = trl_train.sft_trainer(tiny_model, rows, tmp_path / "sft", FAST)
    eos_id = trainer.processing_class.eos_token_id
    ids = trainer.train_dataset[0]["input_ids"]
    assert ids[-1] == eos_id and ids.count(eos_id) == 1


def test_train_sft_saves_and_reloads(tiny_model, tmp_path):
    metrics = trl_train.train_sft(tiny_model, sft_rows(), tmp_path / "sft", {**FAST, "packing": True})
    assert math.isfinite(metrics["train_loss"])
    _reload(tmp_path / "sft")


def test_lora_dpo_saves_a_merged_model(tiny_model, tmp_path):
    out = tmp_path / "lora"
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "lora_dropout": 0.0}
    metrics = trl_train.train_dpo(tiny_model, pair_rows(), out, {**FAST, "learning_rate": 1e-2}, lora=lora)
    assert math.isfinite(metrics["train_loss"])
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert not (out / "adapter_config.json").exists()
    merged = _weights(_reload(out))
    assert not any("lora" in k for k in merged)
    base = _weights(_reload(tiny_model))
    changed = [k for k in base if not torch.equal(base[k], merged[k])]
    assert changed and all("c_attn" in k for k in changed)


def test_gradient_checkpointing_passes_through(tiny_model, tmp_path):
    cfg = {**FAST, "max_steps": 1, "gradient_checkpointing": True}
    trainer = trl_train.dpo_trainer(tiny_model, pair_rows(2), tmp_path / "gc", cfg)
    assert trainer.args.gradient_checkpointing
    assert math.isfinite(trainer.train().training_loss)


def test_unknown_option_names_the_key_and_suggests(tmp_path):
    from trl import DPOConfig, SFTConfig

    with pytest.raises(trl_train.UnknownOptionError, match=r"'betta'.*'beta'"):
        trl_train.build_config(DPOConfig, {"betta": 0.1}, tmp_path)
    with pytest.raises(ValueError, match=r"'pakcing'.*'packing'"):
        trl_train.build_config(SFTConfig, {"pakcing": True}, tmp_path)


def test_cpu_defaults_are_overridable(tmp_path):
    from trl import DPOConfig

    args = trl_train.build_config(DPOConfig, {"beta": 0.3, "logging_steps": 5}, tmp_path)
    assert args.beta == 0.3 and args.logging_steps == 5 and args.report_to == []
    if not torch.cuda.is_available():
        assert args.use_cpu and args.bf16 is False


def test_rows_missing_a_field_are_named(tiny_model, tmp_path):
    rows = pair_rows(2)
    del rows[1]["rejected"]
    with pytest.raises(ValueError, match=r"row 1.*rejected"):
        trl_train.dpo_trainer(tiny_model, rows, tmp_path / "x", FAST)
