"""One tokenisation rule (align/tokenization.py) for sampling, ranking training and TRL, with a Code
Llama-style tokenizer that adds BOS (built here: a character vocabulary, `add_bos_token=True`).

    .venv/bin/python -m pytest tests/align/test_tokenization.py
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from align.prompting import format_prompt  # noqa: E402
from align.tokenization import encode, prompt_ids  # noqa: E402
from align.train.rank_trainer import rank_collator  # noqa: E402

ROW = {"prompt": "Add two numbers.\ndef add(a, b):", "responses": ["def add(a, b):\n    return a + b"],
       "scores": [1.0], "roles": ["teacher"]}


@pytest.fixture(scope="module")
def llama_tokenizer():
    chars = "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789():+-*=.,\"'\n _<>|#[]{}"
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(dict.fromkeys(chars))}}
    tok = transformers.LlamaTokenizer(vocab=vocab, merges=[], add_bos_token=True)
    tok.pad_token = tok.eos_token
    return tok


def test_prompt_gets_bos_and_a_completion_ends_in_eos(llama_tokenizer):
    tok = llama_tokenizer
    ids = prompt_ids(tok, "def f(x):")
    assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids
    prompt, (done,) = encode(tok, "def f(x):\n", ["def g"])
    assert prompt == prompt_ids(tok, "def f(x):\n")
    assert done[-1] == tok.eos_token_id and tok.bos_token_id not in done
    # Tokenised alone, "def g" would start with the metaspace token, which never follows a newline.
    assert done[:-1] == prompt_ids(tok, "def f(x):\ndef g")[len(prompt):]
    assert done[:-1] != tok("def g", add_special_tokens=False)["input_ids"]


def test_rank_collator_trains_on_what_sampling_sees(llama_tokenizer):
    """Code Llama: the ranking trainer used to tokenise the prompt without BOS, sampling and eval with it."""
    tok = llama_tokenizer
    batch = rank_collator(tok, max_length=256)([ROW])
    p, n = int(batch["prompt_lens"][0]), int(batch["response_lens"][0, 0])
    assert batch["prompt_ids"][0, :p].tolist() == prompt_ids(tok, ROW["prompt"])
    assert batch["prompt_ids"][0, 0] == tok.bos_token_id
    assert batch["response_ids"][0, 0, :n].tolist() == encode(tok, ROW["prompt"], [ROW["responses"][0]])[1][0]


def test_sampling_encodes_prompts_by_the_same_rule(llama_tokenizer):
    from align.backends.base import encode_prompt   # what the hf and vllm backends encode with

    text = format_prompt(ROW["prompt"])
    assert encode_prompt(llama_tokenizer, text) == prompt_ids(llama_tokenizer, text)


def test_trl_rows_follow_the_rule(llama_tokenizer, tmp_path):
    pytest.importorskip("trl")
    from align.train.trl_train import dpo_trainer

    cfg = transformers.LlamaConfig(vocab_size=len(llama_tokenizer), hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=2)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "model")
    llama_tokenizer.save_pretrained(tmp_path / "model")
    prompt = format_prompt(ROW["prompt"])
    rows = [{"prompt": prompt, "chosen": ROW["responses"][0] + "\n", "rejected": "def add(a, b):\n    pass\n"}]
    trainer = dpo_trainer(tmp_path / "model", rows, tmp_path / "out", {"max_steps": 1, "save_strategy": "no"})
    first = trainer.train_dataset[0]
    assert first["prompt_ids"] == prompt_ids(llama_tokenizer, prompt)
    assert first["chosen_ids"] == encode(llama_tokenizer, prompt, [rows[0]["chosen"]])[1][0]
