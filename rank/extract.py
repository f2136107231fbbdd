"""Extract the program from a model's raw response.

Models answer with a fenced block, with bare code, or with code followed by chatter or by the
next problem. We keep the first fenced block that defines the entry point (an instruction model
often shows a usage example first), else the first fenced block, else the text; then cut at the
first top-level line that is not code (a new triple-quoted prompt, prose), and make sure the entry
point is defined: an answer that continues the prompt (a function body) gets the prompt's code
prepended. This is the one rule for sampling and eval (`align.templates.Template.extract`).
"""
from __future__ import annotations

import ast
import re

_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.S)


def _fenced(text: str, entry_point: str) -> str | None:
    """The first fenced block defining `entry_point`, else the first fenced block, else None."""
    blocks = [m.group(1) for m in _FENCE.finditer(text)]
    return next((b for b in blocks if _defines(b, entry_point)), blocks[0] if blocks else None)


def _prompt_code(prompt: str, entry_point: str) -> str:
    """The code part of a prompt: all of it when it parses (HumanEval), else from the entry point's
    `def` line on (an NL spec followed by a signature, as MBPP and the built-in tasks)."""
    try:
        ast.parse(prompt)
        return prompt
    except SyntaxError:
        m = re.search(rf"^\s*(async\s+)?def\s+{re.escape(entry_point)}\s*\(", prompt, re.M)
        return prompt[m.start():].lstrip("\n") if m else ""


def _cut_trailing(text: str) -> str:
    """Keep the longest prefix of lines that parses, trimming trailing non-code lines."""
    lines = text.rstrip().split("\n")
    # A new triple-quoted prompt at column 0 starts the next problem: stop there.
    for i, line in enumerate(lines):
        if i > 0 and line.startswith(('"""', "'''")):
            lines = lines[:i]
            break
    while lines:
        src = "\n".join(lines)
        try:
            ast.parse(src)
            return src.rstrip() + "\n"
        except SyntaxError:
            lines.pop()
    return text


def _defines(code: str, entry_point: str) -> bool:
    return re.search(rf"^\s*(async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.M) is not None


def extract_code(text: str, entry_point: str, prompt: str | None = None) -> str:
    """Return the program to test: `text` (a raw completion) reduced to code defining `entry_point`.

    `prompt` is the code the model continued (a HumanEval-style signature + docstring); when the
    response is only a body, the prompt is prepended so the program is whole.
    """
    body = _fenced(text, entry_point)
    code = body if body is not None else text
    if prompt is not None and not _defines(code, entry_point) and _defines(prompt, entry_point):
        head = _prompt_code(prompt, entry_point)
        code = head + ("" if head.endswith("\n") or code.startswith("\n") else "\n") + code
    return _cut_trailing(code)
