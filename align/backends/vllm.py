"""vLLM backend (GPU): one engine per process; Ray places it with num_gpus = tensor_parallel_size.

    load_backend("vllm", "bigcode/starcoder", tensor_parallel_size=2, max_model_len=4096)

Options are checked against vLLM's own `EngineArgs` field list (align.backends.vllm_args) before
anything loads, so a typo or a foreign option (`batch_size`) is refused instead of crashing the engine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from align.backends.base import (BackendUnavailable, Prompt, SamplingParams, encode_prompt, new_usage, parse_options,
                                 truncate_at_stop)
from align.backends.vllm_args import ENGINE_ARGS


@dataclass
class VLLMOptions:
    tensor_parallel_size: int = 1    # GPUs per engine; also the Ray actor's num_gpus
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")


def engine_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments `vllm.LLM` gets: validated options, None values left to vLLM's defaults."""
    opts, extra = parse_options(VLLMOptions, "vllm", options, extra=ENGINE_ARGS)
    own = {k: v for k, v in vars(opts).items() if v is not None}
    return {**own, **extra}


class VLLMBackend:
    """vLLM engine (GPU). Installed with the `vllm` extra; imported only when used."""
    Options = VLLMOptions
    extra_options = ENGINE_ARGS

    def __init__(self, model: str, **options: Any):
        kwargs = engine_kwargs(options)
        try:
            import vllm
        except ImportError as e:
            raise BackendUnavailable(
                f"generation backend 'vllm' needs the vllm package ({e}); install it with "
                "`pip install 'rrtf-align[vllm]'` on a GPU machine, or use backend 'hf'") from None
        self._vllm, self.usage = vllm, new_usage()
        self.llm = vllm.LLM(model=model, **kwargs)

    @classmethod
    def resources(cls, opts: VLLMOptions, extra: dict, gpus_available: bool) -> dict[str, float]:
        return {"num_cpus": 1, "num_gpus": opts.tensor_parallel_size * extra.get("pipeline_parallel_size", 1)}

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[str]]:
        greedy = params.temperature == 0
        stops = [s for s in params.stop if s]
        sp = self._vllm.SamplingParams(
            n=1 if greedy else params.n, temperature=params.temperature, top_p=1.0 if greedy else params.top_p,
            max_tokens=params.max_new_tokens, stop=stops, seed=params.seed)
        tok = self.llm.get_tokenizer()
        # Token ids encoded as the hf backend does, so both see the same prompt (chat template included).
        results = self.llm.generate([{"prompt_token_ids": encode_prompt(tok, p)} for p in prompts], sp, use_tqdm=False)
        self.usage["requests"] += len(prompts)
        for r in results:
            self.usage["prompt_tokens"] += len(r.prompt_token_ids or [])
            self.usage["completion_tokens"] += sum(len(o.token_ids) for o in r.outputs)
        # vLLM already cuts at stop strings; truncating again is a no-op kept for chat templates' EOS text.
        return [[truncate_at_stop(o.text, stops)[0] for o in r.outputs] * (params.n if greedy else 1)
                for r in results]
