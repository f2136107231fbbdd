"""One tokenisation rule per model, shared by sampling, training and eval.

A prompt gets the tokenizer's own special tokens at its start (BOS for Code Llama, nothing for StarCoder)
and none at its end; a completion (training target) gets no special token at its start and EOS at its
end. Sampling (align/generate.py's HF backend), the ranking collator (align/train/rank_trainer.py) and the
TRL rows (whose trainers tokenise the prompt with special tokens and append EOS as text) all follow it, so
a model is trained on the token sequence it is sampled and evaluated on.

    from align.tokenization import prompt_ids, completion_ids
    prompt_ids(tok, "def f(x):")          # [BOS?, ...]
    completion_ids(tok, "    return x\\n")  # [..., EOS]

Test: `pytest tests/align/test_tokenization.py`.
"""
from __future__ import annotations

from typing import Any

EOS_FALLBACK = "<|endoftext|>"   # StarCoder's EOS, for tokenizers that do not declare one


def eos_id(tokenizer: Any) -> int:
    """The EOS token id; ValueError if the tokenizer has none."""
    eos = tokenizer.eos_token_id
    if eos is None:
        eos = tokenizer.convert_tokens_to_ids(EOS_FALLBACK)
    if eos is None or eos == getattr(tokenizer, "unk_token_id", object()):
        raise ValueError(f"tokenizer has no EOS token (expected eos_token or {EOS_FALLBACK!r})")
    return eos


def prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a prompt (or prompt + completion): the tokenizer's leading special tokens (BOS), no
    trailing EOS."""
    ids = list(tokenizer(text)["input_ids"])
    eos = tokenizer.eos_token_id
    # Some tokenizers (add_eos_token=True) also close every text with EOS: a prompt continues, so drop it.
    if eos is not None and len(ids) > 1 and ids[-1] == eos and not text.endswith(str(tokenizer.eos_token)):
        ids.pop()
    return ids


def prompt_ids_batch(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return [prompt_ids(tokenizer, t) for t in texts]


def encode(tokenizer: Any, prompt: str, completions: list[str]) -> tuple[list[int], list[list[int]]]:
    """(prompt ids, [completion ids + EOS]) for one prompt and its completions.

    Each prompt + completion is tokenised whole; the prompt is the longest token prefix all of them share
    with the prompt alone (a token merging across the boundary goes to the completions, as in TRL).
    """
    alone = prompt_ids(tokenizer, prompt)
    whole = [prompt_ids(tokenizer, prompt + c) for c in completions]
    n = min([len(alone), *(_common_prefix(alone, w) for w in whole)])
    eos = eos_id(tokenizer)
    return alone[:n], [w[n:] + [eos] for w in whole]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n
