"""Hugging Face `generate` backend: batched, left-padded, on the configured device and dtype.

    load_backend("hf", "bigcode/starcoderbase-1b", device="cuda", dtype="bfloat16", batch_size=32)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from align.backends.base import Prompt, SamplingParams, encode_prompt, new_usage, parse_options, truncate_at_stop

DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass
class HFOptions:
    batch_size: int = 8              # sequences (prompts x n) per generate call
    device: str = "auto"             # "auto" = cuda when available, else cpu; or "cpu", "cuda", "cuda:1"
    dtype: str = "auto"              # "auto" = the checkpoint's dtype on GPU, float32 on CPU
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device != "auto" and self.device.split(":")[0] not in ("cpu", "cuda", "mps", "xpu"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


class HFBackend:
    """Batched `model.generate` with left padding and the KV cache.

    Prompts are sorted by token length and cut into batches of `batch_size` sequences
    (prompts x n), so each batch pads little. Sampling is seeded once per call, so the
    same prompts, params and batch size give the same completions. Chat prompts go through
    the tokenizer's chat template (with the generation prompt appended).
    """
    Options = HFOptions

    def __init__(self, model: Any, *, tokenizer: Any = None, **options: Any):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        opts, _ = parse_options(HFOptions, "hf", options)
        self.options, self.batch_size, self.usage = opts, opts.batch_size, new_usage()
        device = opts.device if opts.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        if isinstance(model, str):
            on_gpu = device != "cpu"
            # On CPU, half precision is slow and lossy: "auto" keeps float32 there.
            dtype = getattr(torch, opts.dtype) if opts.dtype != "auto" else ("auto" if on_gpu else torch.float32)
            self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(model, trust_remote_code=opts.trust_remote_code)
            self.model = AutoModelForCausalLM.from_pretrained(
                model, dtype=dtype, trust_remote_code=opts.trust_remote_code)
            self.model.to(device)
        else:  # an nn.Module already in memory (the training loop samples its own student): left where it is
            if tokenizer is None:
                raise ValueError("HFBackend given a model object also needs its tokenizer")
            self.model, self.tokenizer = model, tokenizer
            if "device" in options:
                self.model.to(device)
        self.model.eval()
        # Padding is done here, not by the tokenizer, so a tokenizer shared with a trainer keeps its settings.
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if self.pad_id is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token")
        self.stop_tokens = [t for t in (tok.eos_token, tok.pad_token) if t]

    @classmethod
    def resources(cls, opts: HFOptions, extra: dict, gpus_available: bool) -> dict[str, float]:
        on_gpu = opts.device.startswith("cuda") or (opts.device == "auto" and gpus_available)
        return {"num_cpus": 1, "num_gpus": 1 if on_gpu else 0}

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[str]]:
        import torch

        if not prompts:
            return []
        greedy = params.temperature == 0
        # Greedy gives n identical answers: decode once, copy n times.
        n_seq = 1 if greedy else params.n
        per_batch = max(1, self.batch_size // n_seq)
        ids = [encode_prompt(self.tokenizer, p) for p in prompts]
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
            self.usage["requests"] += 1
            self.usage["prompt_tokens"] += sum(len(ids[i]) for i in idx)
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
        new = seqs[:, width:]
        self.usage["completion_tokens"] += int((new != self.pad_id).sum())
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=False)
        # Cut at EOS/stops first, then drop other special-token text (FIM markers), as servers do.
        specials = [t for t in self.tokenizer.all_special_tokens if t]
        out = []
        for t in texts:
            t = truncate_at_stop(t, stops)[0]
            for sp in specials:
                t = t.replace(sp, "")
            out.append(t)
        return out


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
