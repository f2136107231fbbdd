"""Prompt templates: how a problem is shown to a model, and how its program is read back.

    t = get_template("alpaca")          # pangu | alpaca | chat | completion | package.module:name
    prompt = t.render(problem)          # str (completion endpoints) or [{"role", "content"}] (chat)
    code = t.extract(problem, text)     # the program the sandbox runs

Each model entry of a run names its template (`models.student.template`), so a base student, a
WizardCoder teacher and a chat model sample the same problems in the formats they were trained on.
Extraction is one rule for every template, in sampling and in eval (`rank.extract.extract_code`,
given the problem's prompt so a completion of a function body is made whole).

- pangu: PanGu-Coder2's format (arXiv:2307.14936 §3.4): the NL spec in triple quotes, then code.
  A prompt that is already code (HumanEval's signature + docstring) is given as it is, not
  quoted again.
- completion: base models on benchmarks, as in the bigcode-evaluation-harness: a HumanEval prompt
  as it is, with the Codex stop set (arXiv:2107.03374); an MBPP problem as a docstring holding the
  description and the first test (the harness's MBPP prompt, after InCoder arXiv:2204.05999).
- alpaca: the instruction format WizardCoder was trained and evaluated with (arXiv:2306.08568).
- chat: one user message; backends apply the tokenizer's chat template or call a chat endpoint.
Nothing heavy is imported: configs validate template names at load.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from align.prompting import EOS, format_prompt, is_code
from rank.extract import extract_code
from rank.plugins import resolve_instance
from rank.records import Problem

# The triple-quote format ends where the next spec, a script guard or a top-level print starts.
PANGU_STOP = [EOS, '\n"""', "\nif __name__", "\nprint("]
# HumanEval completion: the function body ends at the next top-level statement (Codex + harness).
HUMANEVAL_STOP = ["\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```"]
# MBPP in the harness: the model writes the whole function after the docstring.
MBPP_STOP = ["\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n```"]

ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately completes "
          "the request.\n\n### Instruction:\nCreate a Python script for this problem:\n{prompt}\n\n### Response:")


@dataclass(frozen=True)
class Template:
    """`render(problem)` -> prompt; `stop` ends a completion (`stop_for` when it depends on the
    problem); `extract(problem, text)` -> the program. A user's own: `package.module:name`
    naming a Template, or a function `Problem -> str` (then PanGu's stop set applies)."""
    name: str
    render_fn: Callable[[Problem], Any]
    stop: list[str]
    stop_fn: Callable[[Problem], list[str]] | None = None

    def render(self, problem: Problem) -> str | list[dict[str, str]]:
        return self.render_fn(problem)

    def stop_for(self, problem: Problem) -> list[str]:
        return list(self.stop_fn(problem) if self.stop_fn else self.stop)

    def extract(self, problem: Problem, text: str) -> str:
        return extract_code(text, problem.entry_point, prompt=problem.prompt)


def _mbpp_text(p: Problem) -> str:
    """The NL description of a non-code prompt (MBPP keeps it in meta; else the prompt's text lines)."""
    if p.meta.get("text"):
        return p.meta["text"]
    lines = p.prompt.rstrip().split("\n")
    return "\n".join(line for line in lines if not line.lstrip().startswith(("def ", "async def ")))


def _completion(p: Problem) -> str:
    if is_code(p.prompt):
        return p.prompt
    example = f"{p.tests[0]}\n" if p.tests else ""
    return f'"""\n{_mbpp_text(p)}\n{example}"""\n'


def _chat(p: Problem) -> list[dict[str, str]]:
    if is_code(p.prompt):
        ask = ("Complete the following Python function. Answer with the whole function in one "
               f"```python code block.\n\n```python\n{p.prompt.rstrip()}\n```")
    else:
        ask = f"{p.prompt.strip()}\n\nWrite this function in Python, in one ```python code block."
    return [{"role": "user", "content": ask}]


TEMPLATES: dict[str, Template] = {t.name: t for t in [
    Template("pangu", lambda p: format_prompt(p.prompt), PANGU_STOP),
    Template("completion", _completion, HUMANEVAL_STOP,
             stop_fn=lambda p: HUMANEVAL_STOP if is_code(p.prompt) else MBPP_STOP),
    Template("alpaca", lambda p: ALPACA.format(prompt=p.prompt.rstrip()), [EOS, "\n### Instruction"]),
    Template("chat", _chat, []),
]}


def get_template(name: str) -> Template:
    """A built-in template or a user's `package.module:name`; unknown names fail with a suggestion."""
    return resolve_instance(TEMPLATES, name, "prompt template", Template, lambda n, fn: Template(n, fn, PANGU_STOP))


def training_text(template: Template, problem: Problem, codes: list[str],
                  tokenizer: Any = None) -> tuple[str, list[str]]:
    """What the student is trained on: (prompt text, [completion text per program]), the text it is
    sampled with under `template`, so training, sampling and eval see one format.

    Text templates: the rendered prompt, and each program as its continuation. A program that starts
    with a code prompt (a body completed after HumanEval's signature, made whole by extraction)
    continues with the rest of it, as it was sampled; any other program follows whole. Chat templates
    (`tokenizer` needed): the tokenizer's chat template with the generation prompt, and each program as
    the assistant's fenced answer, cut where the chat template ends the turn. The prompt holds no BOS
    text when the tokenizer adds BOS itself, and a completion no EOS text (align.tokenization adds
    both), so the token ids are the ones sampling uses (align.backends.base.encode_prompt).
    """
    rendered = template.render(problem)
    if isinstance(rendered, str):
        return rendered, [_continuation(rendered, code) for code in codes]
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"template {template.name!r} renders chat messages: training needs the student's "
                         f"tokenizer with a chat template")
    prompt = tokenizer.apply_chat_template(rendered, tokenize=False, add_generation_prompt=True)
    completions = []
    for code in codes:
        answer = [{"role": "assistant", "content": f"```python\n{code.strip()}\n```"}]
        whole = tokenizer.apply_chat_template(rendered + answer, tokenize=False)
        if not whole.startswith(prompt):
            raise ValueError(f"the chat template of {tokenizer.name_or_path!r} does not render the conversation "
                             f"as the generation prompt followed by the answer; it cannot be trained on as text")
        completion, eos = whole[len(prompt):].rstrip(), tokenizer.eos_token
        if eos and completion.endswith(eos):
            completion = completion[:-len(eos)].rstrip()
        completions.append(completion)
    bos = tokenizer.bos_token
    if bos and prompt.startswith(bos) and _adds_bos(tokenizer):
        prompt = prompt[len(bos):]
    return prompt, completions


def _continuation(prompt: str, code: str) -> str:
    if is_code(prompt) and code.startswith(prompt) and code != prompt:
        rest = code[len(prompt):]
        # A prompt without a final newline was continued by one: keep it, or the body joins the docstring.
        return (rest.lstrip("\n") if prompt.endswith("\n") else "\n" + rest.lstrip("\n")).rstrip("\n") + "\n"
    return code.strip("\n") + "\n"


def _adds_bos(tokenizer: Any) -> bool:
    ids = tokenizer("x")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def generate(backend: Any, template: Template, problems: list[Problem], params: Any) -> list[list[str]]:
    """`params.n` completions per problem, in problem order: prompts rendered by `template`, each
    batch sharing one stop set (`params.stop` is replaced by the template's)."""
    out: list[list[str] | None] = [None] * len(problems)
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, p in enumerate(problems):
        groups.setdefault(tuple(template.stop_for(p)), []).append(i)
    for stop, idx in groups.items():
        texts = backend.generate([template.render(problems[i]) for i in idx],
                                 dataclasses.replace(params, stop=list(stop)))
        if len(texts) != len(idx):
            raise RuntimeError(f"backend returned {len(texts)} results for {len(idx)} prompts")
        for i, t in zip(idx, texts):
            out[i] = t
    return out  # type: ignore[return-value]
