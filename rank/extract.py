"""Extract the program from a model's raw response.

Models answer with a fenced block, with bare code, or with code followed by chatter or by the
next problem. We keep the first fenced block if there is one, then cut at the first top-level
line that is not code (a new triple-quoted prompt, prose), and make sure the entry point is
defined (completion-style answers that continue a signature get the prompt's code prepended).
"""
from __future__ import annotations

import ast
import re

_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.S)


def _first_fenced(text: str) -> str | None:
    m = _FENCE.search(text)
    return m.group(1) if m else None


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
    body = _first_fenced(text)
    code = body if body is not None else text
    if prompt is not None and not _defines(code, entry_point) and _defines(prompt, entry_point):
        code = prompt + code
    return _cut_trailing(code)
