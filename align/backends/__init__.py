"""Generation backends: one contract (align.backends.base), a table of built-ins, a user's own.

    backend = load_backend("hf", "path/or/hub-id", device="cuda", dtype="bfloat16", batch_size=16)
    backend = load_backend("openai", "my-model", base_url="http://localhost:8000/v1", api_key_env=None)
    outs = backend.generate(prompts, SamplingParams(n=4, temperature=0.8, seed=1))  # 4 texts per prompt
    check_backend("vllm", {"tensor_parallel_size": 2})    # at config load: no torch/vllm/openai import
    backend_resources("vllm", {"tensor_parallel_size": 2}) # {"num_cpus": 1, "num_gpus": 2} for a Ray actor

A user's own backend is "package.module:Class", built as Class(model, **options); it may declare
`Options` (a dataclass), `extra_options` and `resources(opts, extra, gpus_available)` like the built-ins.
"""
from __future__ import annotations

import inspect
from typing import Any

from align.backends.base import (DEFAULT_STOP, Backend, BackendError, BackendOptionError, BackendUnavailable,
                                 Prompt, SamplingParams, is_chat, new_usage, parse_options, truncate_at_stop)
from align.backends.hf import HFBackend
from align.backends.openai_api import OpenAIBackend
from align.backends.vllm import VLLMBackend
from rank.plugins import resolve

# The modules above import torch, vllm and openai only inside the backends' methods.
BACKENDS: dict[str, type] = {"hf": HFBackend, "vllm": VLLMBackend, "openai": OpenAIBackend}

__all__ = ["BACKENDS", "DEFAULT_STOP", "Backend", "BackendError", "BackendOptionError", "BackendUnavailable",
           "Prompt", "SamplingParams", "backend_resources", "check_backend", "is_chat", "load_backend",
           "new_usage", "truncate_at_stop"]


def _checked(name: str, options: dict[str, Any]) -> tuple[type, Any, dict[str, Any]]:
    """(class, typed options or None, pass-through options) for backend `name`; raises on a bad name or option."""
    cls = resolve(BACKENDS, name, "generation backend")
    if not callable(getattr(cls, "generate", None)):
        raise TypeError(f"generation backend {name!r} has no generate(prompts, params) method")
    if hasattr(cls, "Options"):
        opts, extra = parse_options(cls.Options, name, options, frozenset(getattr(cls, "extra_options", ())))
        return cls, opts, extra
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        valid = [k for k, p in params.items() if p.kind is p.KEYWORD_ONLY or
                 (p.kind is p.POSITIONAL_OR_KEYWORD and k != next(iter(params)))]
        for key in options:
            if key not in valid:
                raise BackendOptionError(f"backend {name!r}: unknown option {key!r}; valid: {', '.join(valid) or 'none'}")
    return cls, None, dict(options)


def check_backend(name: str, options: dict[str, Any] | None = None) -> None:
    """Validate a backend name and its options without loading anything heavy (config load time)."""
    _checked(name, options or {})


def backend_resources(name: str, options: dict[str, Any] | None = None,
                      gpus_available: bool = False) -> dict[str, float]:
    """Ray actor options for one replica: vllm num_gpus = tensor_parallel_size (x pipeline size),
    hf 1 GPU when its device is cuda (or "auto" and `gpus_available`), openai none."""
    cls, opts, extra = _checked(name, options or {})
    if hasattr(cls, "resources"):
        return cls.resources(opts, extra, gpus_available)
    return {"num_cpus": 1, "num_gpus": 0}


def load_backend(name: str, model: Any, **options: Any) -> Backend:
    """Build backend `name` (a built-in or "package.module:Class") for `model`: a path, a hub id,
    or a registry name of align.models ("starcoder-15b" loads its hub id or local path)."""
    from align.models import resolve_ref

    cls, _, _ = _checked(name, options)
    return cls(resolve_ref(model) if isinstance(model, str) else model, **options)
