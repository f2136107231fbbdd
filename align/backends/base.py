"""The backend contract every generation backend meets (docs/design.md §5): prompts, sampling
parameters, options, resources and usage. Standard library only: the config loader checks
backend names and options through here without importing torch, vLLM or the openai client.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol, Union, runtime_checkable

from align.prompting import EOS
from align.tokenization import prompt_ids
from rank.plugins import suggest
from rank.typed import FieldError, build

# Top-level code after the quoted spec is finished when the next spec, a script guard or a
# top-level print starts (the Codex stop set of arXiv:2107.03374, adapted to align.prompting).
DEFAULT_STOP = [EOS, '\n"""', "\nif __name__", "\nprint("]

# A prompt is raw text (a completion) or chat messages [{"role": "user", "content": ...}].
Prompt = Union[str, list]


@dataclass
class SamplingParams:
    n: int = 1                     # completions per prompt
    temperature: float = 0.8       # 0 = greedy
    top_p: float = 0.95
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=lambda: list(DEFAULT_STOP))
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@runtime_checkable
class Backend(Protocol):
    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[str]]:
        """Return `params.n` completions (the new text only) for each prompt, in prompt order."""
        ...


class BackendUnavailable(RuntimeError):
    """An optional backend whose package is not installed."""


class BackendError(RuntimeError):
    """A backend that cannot answer (unreachable server, malformed answer); what was sampled is kept."""


class BackendOptionError(ValueError):
    """An unknown or invalid backend option."""


def new_usage() -> dict[str, int]:
    """The counters every built-in backend keeps in `Backend.usage` (cumulative over calls)."""
    return {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cache_hits": 0, "retries": 0}


def truncate_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """Cut `text` at the earliest occurrence of any stop string; say whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def is_chat(prompt: Prompt) -> bool:
    """True for chat messages, False for text; anything else is a TypeError naming what it got."""
    if isinstance(prompt, str):
        return False
    if isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
        return True
    raise TypeError(f"a prompt is a str or a list of {{'role', 'content'}} messages, got {prompt!r:.80}")


def encode_prompt(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids of one prompt for a Hugging Face tokenizer: text with the tokenizer's own special
    tokens (BOS for Llama); chat messages through its chat template (which writes its own special
    tokens, so none are added again). The hf and vllm backends both encode through here."""
    if not is_chat(prompt):
        return prompt_ids(tokenizer, prompt)   # align.tokenization: the one rule training uses too
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"chat prompt given but the tokenizer of {tokenizer.name_or_path!r} has no chat "
                         f"template; use a text template (pangu, alpaca, completion) for this model")
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def parse_options(options_cls: type, backend: str, options: dict[str, Any],
                  extra: frozenset[str] = frozenset()) -> tuple[Any, dict[str, Any]]:
    """Validate `options` against the dataclass `options_cls` (types, then its __post_init__).

    Keys in `extra` (e.g. vLLM EngineArgs fields) pass through untyped and come back as a dict.
    Raises BackendOptionError naming the option, the closest valid one and all valid ones.
    """
    known = {f.name for f in dataclasses.fields(options_cls)}
    passthrough = {k: v for k, v in options.items() if k in extra and k not in known}
    own = {k: v for k, v in options.items() if k not in passthrough}
    for key in own:
        if key not in known:
            valid = sorted(known) + (["any vLLM EngineArgs field"] if extra else [])
            raise BackendOptionError(f"backend {backend!r}: unknown option {key!r}"
                                     f"{suggest(key, sorted(known | extra))}; valid: {', '.join(valid)}")
    try:
        return build(options_cls, own), passthrough
    except FieldError as e:     # a wrong type names the option; a range check in __post_init__ says its own
        where = "" if e.field == options_cls.__name__ else f" option {e.field!r}:"
        raise BackendOptionError(f"backend {backend!r}:{where} {e.message}") from None
