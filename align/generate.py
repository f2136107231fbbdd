"""Generation backends: a small protocol, a table of built-ins, and a Ray fan-out.

    backend = load_backend("hf", "path/or/hub-id", batch_size=16)
    outs = backend.generate(prompts, SamplingParams(n=4, temperature=0.8, seed=1))  # 4 per prompt

Built-ins: "hf" (Hugging Face `generate`, CPU or GPU) and "vllm" (optional extra, GPU).
`as_text_fn(backend, params)` adapts a backend to the plain callable evol takes.
A user's own backend is given as "package.module:Class", constructed as Class(model, **kwargs).
Tests: `.venv/bin/python -m pytest tests/align/test_generate.py`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

from align.prompting import EOS
from rank.plugins import resolve

# Top-level code after the quoted spec is finished when the next spec, a script guard or a
# top-level print starts (the Codex stop set of arXiv:2107.03374, adapted to align.prompting).
DEFAULT_STOP = [EOS, '\n"""', "\nif __name__", "\nprint("]


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
    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        """Return `params.n` completions (the new text only) for each prompt, in prompt order."""
        ...


class BackendUnavailable(RuntimeError):
    """An optional backend whose package is not installed."""


def truncate_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """Cut `text` at the earliest occurrence of any stop string; say whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


# ---------------------------------------------------------------- Hugging Face

class HFBackend:
    """Batched `model.generate` with left padding and the KV cache.

    Prompts are sorted by token length and cut into batches of `batch_size` sequences
    (prompts x n), so each batch pads little. Sampling is seeded once per call, so the
    same prompts, params and batch size give the same completions.
    """

    def __init__(self, model: Any, *, tokenizer: Any = None, batch_size: int = 8,
                 device: str | None = None, dtype: str | None = None,
                 trust_remote_code: bool = False):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        if isinstance(model, str):
            torch_dtype = getattr(torch, dtype) if dtype else None
            self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
            self.model = AutoModelForCausalLM.from_pretrained(
                model, dtype=torch_dtype, trust_remote_code=trust_remote_code)
        else:  # an nn.Module already in memory (the training loop samples its own student)
            if tokenizer is None:
                raise ValueError("HFBackend given a model object also needs its tokenizer")
            self.model, self.tokenizer = model, tokenizer
        if device:
            self.model.to(device)
        self.model.eval()
        # Padding is done here, not by the tokenizer, so a tokenizer shared with a trainer keeps its settings.
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if self.pad_id is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token")
        self.stop_tokens = [t for t in (tok.eos_token, tok.pad_token) if t]

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        import torch

        from align.tokenization import prompt_ids_batch

        if not prompts:
            return []
        greedy = params.temperature == 0
        # Greedy gives n identical answers: decode once, copy n times.
        n_seq = 1 if greedy else params.n
        per_batch = max(1, self.batch_size // n_seq)
        ids = prompt_ids_batch(self.tokenizer, prompts)   # align.tokenization: one rule with training
        order = sorted(range(len(prompts)), key=lambda i: -len(ids[i]))
        stops = list(dict.fromkeys([s for s in [*params.stop, *self.stop_tokens] if s]))
        out: list[list[str]] = [[] for _ in prompts]
        torch.manual_seed(params.seed)
        for start in range(0, len(order), per_batch):
            idx = order[start:start + per_batch]
            texts = self._generate_batch([ids[i] for i in idx], params, n_seq, greedy, stops)
            for j, i in enumerate(idx):
                got = texts[j * n_seq:(j + 1) * n_seq]
                out[i] = got * params.n if greedy else got
        return out

    def _generate_batch(self, ids: list[list[int]], params: SamplingParams, n_seq: int, greedy: bool,
                        stops: list[str]) -> list[str]:
        import torch

        width = max(map(len, ids))
        # Left padding: a decoder-only model's new tokens must follow each prompt directly.
        input_ids = torch.tensor([[self.pad_id] * (width - len(x)) + x for x in ids], device=self.model.device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=self.model.device)
        sampling = {} if greedy else {"temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
        with torch.inference_mode():
            seqs = self.model.generate(
                input_ids=input_ids, attention_mask=mask, do_sample=not greedy, num_return_sequences=n_seq,
                max_new_tokens=params.max_new_tokens, use_cache=True, pad_token_id=self.pad_id,
                eos_token_id=self.tokenizer.eos_token_id,
                stopping_criteria=[_StopOnText(self.tokenizer, width, stops)], **sampling)
        new = self.tokenizer.batch_decode(seqs[:, width:], skip_special_tokens=False)
        return [truncate_at_stop(t, stops)[0] for t in new]


class _StopOnText:
    """Per-row stopping on decoded text, so a stop string split across tokens is still seen."""

    def __init__(self, tokenizer: Any, prompt_width: int, stops: list[str]):
        self.tokenizer, self.width, self.stops = tokenizer, prompt_width, stops
        self.tail = max((len(s) for s in stops), default=1) + 8   # chars that can hold a new stop

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        # Decoding only the last few tokens keeps this O(1) per step; a stop begins in them
        # unless an earlier step already saw it.
        window = input_ids[:, max(self.width, input_ids.shape[1] - self.tail):]
        for row, text in enumerate(self.tokenizer.batch_decode(window, skip_special_tokens=False)):
            done[row] = truncate_at_stop(text, self.stops)[1]
        return done


# ---------------------------------------------------------------- vLLM (optional)

class VLLMBackend:
    """vLLM engine (GPU). Installed with the `vllm` extra; imported only when used."""

    def __init__(self, model: str, *, tensor_parallel_size: int = 1, dtype: str = "auto",
                 gpu_memory_utilization: float = 0.9, **engine_kwargs: Any):
        try:
            import vllm
        except ImportError as e:
            raise BackendUnavailable(
                f"generation backend 'vllm' needs the vllm package ({e}); install it with "
                "`pip install 'rrtf-align[vllm]'` on a GPU machine, or use backend 'hf'") from None
        self._vllm = vllm
        self.llm = vllm.LLM(model=model, tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                            gpu_memory_utilization=gpu_memory_utilization, **engine_kwargs)

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        greedy = params.temperature == 0
        sp = self._vllm.SamplingParams(
            n=1 if greedy else params.n, temperature=params.temperature, top_p=1.0 if greedy else params.top_p,
            max_tokens=params.max_new_tokens, stop=[s for s in params.stop if s], seed=params.seed)
        results = self.llm.generate(prompts, sp, use_tqdm=False)
        return [[o.text for o in r.outputs] * (params.n if greedy else 1) for r in results]


BACKENDS: dict[str, type] = {"hf": HFBackend, "vllm": VLLMBackend}


def load_backend(name: str, model: Any, **kwargs: Any) -> Backend:
    """Build backend `name` (a built-in or "package.module:Class") for `model`: a path, a hub id,
    or a registry name of align.models ("starcoder-15b" loads its hub id or local path)."""
    from align.models import REGISTRY

    if isinstance(model, str) and model in REGISTRY:
        model = REGISTRY[model].source
    cls = resolve(BACKENDS, name, "generation backend")
    backend = cls(model, **kwargs)
    if not isinstance(backend, Backend):
        raise TypeError(f"generation backend {name!r} has no generate(prompts, params) method")
    return backend


def as_text_fn(backend: Backend, params: SamplingParams) -> Callable[[list[str]], list[str]]:
    """The plain `list[str] -> list[str]` callable evol takes (it never imports align): first completion each."""
    return lambda prompts: [outs[0] for outs in backend.generate(prompts, dataclasses.replace(params, n=1))]


# ---------------------------------------------------------------- Ray fan-out

class _Replica:
    """A Ray actor holding one backend: the model loads once per replica, not per shard."""

    def __init__(self, backend_name: str, model: Any, kwargs: dict[str, Any]):
        self.backend = load_backend(backend_name, model, **kwargs)

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        return self.backend.generate(prompts, params)


def generate_with_ray(backend_name: str, model: Any, prompts: list[str], params: SamplingParams,
                      num_replicas: int = 1, *, backend_kwargs: dict[str, Any] | None = None,
                      num_cpus_per_replica: float = 1, num_gpus_per_replica: float = 0,
                      ray_address: str | None = None) -> list[list[str]]:
    """Shard `prompts` into `num_replicas` contiguous slices, one Ray actor each; results in prompt order.

    Each shard is sampled with `params.seed`, so a result depends on the number of replicas
    (as it does on the batch size), but is reproducible for a fixed layout.
    """
    import ray

    from align.fanout import init_ray

    if num_replicas < 1:
        raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
    if not prompts:
        return []
    init_ray(ray_address)
    num_replicas = min(num_replicas, len(prompts))
    size = -(-len(prompts) // num_replicas)
    shards = [prompts[i:i + size] for i in range(0, len(prompts), size)]
    actor_cls = ray.remote(num_cpus=num_cpus_per_replica, num_gpus=num_gpus_per_replica)(_Replica)
    actors = [actor_cls.remote(backend_name, model, backend_kwargs or {}) for _ in shards]
    try:
        parts = ray.get([a.generate.remote(s, params) for a, s in zip(actors, shards)])
    finally:
        for a in actors:
            ray.kill(a)
    return [outs for part in parts for outs in part]
