"""The one prompt format used for pretraining the tiny models, sampling, training and eval.

PanGu-Coder2 (arXiv:2307.14936, §3.4) trains on the problem text wrapped in triple
quotes followed by the code; the model writes the whole function after the closing quotes.
"""
from __future__ import annotations

import ast

EOS = "<|endoftext|>"
# StarCoder's fill-in-the-middle tokens (arXiv:2305.06161), used by the tiny pretraining.
FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD = "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"
SPECIAL_TOKENS = [EOS, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD]


def is_code(prompt: str) -> bool:
    """True when the prompt is Python already (a signature + docstring to complete, as HumanEval's)."""
    try:
        ast.parse(prompt)
    except SyntaxError:
        return False
    return "def " in prompt


def format_prompt(prompt: str) -> str:
    """Wrap a problem's prompt (NL spec + signature) in triple quotes; the response follows.
    A prompt that is code already (HumanEval: it holds its own docstring) is kept as it is."""
    return prompt if is_code(prompt) else f'"""\n{prompt.strip()}\n"""\n'


def format_example(prompt: str, code: str) -> str:
    """One training document: the wrapped prompt, the code, then EOS."""
    return format_prompt(prompt) + code.strip("\n") + "\n" + EOS
