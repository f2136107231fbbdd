"""The model registry: hub ids, architectures and memory estimates, without downloading weights.

    python -m align.models starcoder-15b --zero 3 --gpus 8      # params and DeepSpeed memory estimate

Architecture numbers are copied from each model's public config.json on the Hugging Face Hub.
Parameters are counted exactly by building the model on the `meta` device from its
transformers config class (no weights are allocated, nothing is downloaded); memory is
estimated with DeepSpeed's own ZeRO estimators, which take parameter counts.
Tests: `.venv/bin/python -m pytest tests/align/test_models.py`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rank.plugins import UnknownNameError, suggest


@dataclass(frozen=True)
class ModelEntry:
    name: str
    hub_id: str | None            # None: a local model whose `path` is set at run time (tiny)
    architecture: str             # transformers config class name
    n_layer: int
    hidden_size: int
    n_head: int
    n_kv_head: int                # 1 = multi-query attention
    vocab_size: int
    intermediate_size: int
    context: int                  # max positions
    fim: bool                     # trained with fill-in-the-middle
    dtype: str                    # default torch dtype name
    tie_embeddings: bool = False
    extra: dict[str, Any] = field(default_factory=dict)   # further config kwargs that change the count
    path: str | None = None       # local checkpoint directory, when there is one

    @property
    def source(self) -> str:
        """What `from_pretrained` should load: the local path if set, else the hub id."""
        if self.path:
            return self.path
        if self.hub_id is None:
            raise ValueError(f"model {self.name!r} is local and has no path yet (build it with align.tiny)")
        return self.hub_id


# How each architecture's config class names the registry's numbers.
_CONFIG_KEYS: dict[str, dict[str, str]] = {
    "GPTBigCodeConfig": {"n_layer": "n_layer", "hidden_size": "n_embd", "n_head": "n_head",
                         "vocab_size": "vocab_size", "intermediate_size": "n_inner", "context": "n_positions"},
    "LlamaConfig": {"n_layer": "num_hidden_layers", "hidden_size": "hidden_size", "n_head": "num_attention_heads",
                    "n_kv_head": "num_key_value_heads", "vocab_size": "vocab_size",
                    "intermediate_size": "intermediate_size", "context": "max_position_embeddings"},
}
_CONFIG_KEYS["StableLmConfig"] = _CONFIG_KEYS["LlamaConfig"]

# GPTBigCode has no kv-head count: one kv head is its multi_query flag.
_KV_TO_CONFIG = {"GPTBigCodeConfig": lambda kv: {"multi_query": kv == 1}}

REGISTRY: dict[str, ModelEntry] = {e.name: e for e in [
    # The embedded CPU default; numbers mirror align.tiny.TinyConfig() (n_inner = 4 * n_embd),
    # and the count is read from the checkpoint's own config.json once `path` is set.
    ModelEntry("tiny", None, "GPTBigCodeConfig", n_layer=2, hidden_size=128, n_head=4, n_kv_head=1,
               vocab_size=600, intermediate_size=512, context=256, fim=True, dtype="float32",
               tie_embeddings=True, extra={"bos_token_id": None, "eos_token_id": None}),
    # StarCoder (arXiv:2305.06161): the base model of PanGu-Coder2 (arXiv:2307.14936).
    ModelEntry("starcoder-15b", "bigcode/starcoder", "GPTBigCodeConfig", n_layer=40, hidden_size=6144, n_head=48,
               n_kv_head=1, vocab_size=49152, intermediate_size=24576, context=8192, fim=True, dtype="bfloat16",
               tie_embeddings=True, extra={"bos_token_id": 0, "eos_token_id": 0}),
    ModelEntry("starcoderbase-1b", "bigcode/starcoderbase-1b", "GPTBigCodeConfig", n_layer=24, hidden_size=2048,
               n_head=16, n_kv_head=1, vocab_size=49152, intermediate_size=8192, context=8192, fim=True,
               dtype="bfloat16", tie_embeddings=True, extra={"bos_token_id": 0, "eos_token_id": 0}),
    # Code Llama (arXiv:2308.12950): the 7B base model was trained with infilling.
    ModelEntry("codellama-7b", "codellama/CodeLlama-7b-hf", "LlamaConfig", n_layer=32, hidden_size=4096, n_head=32,
               n_kv_head=32, vocab_size=32016, intermediate_size=11008, context=16384, fim=True, dtype="bfloat16",
               extra={"rope_theta": 1e6}),
    ModelEntry("stable-code-3b", "stabilityai/stable-code-3b", "StableLmConfig", n_layer=32, hidden_size=2560,
               n_head=32, n_kv_head=32, vocab_size=50304, intermediate_size=6912, context=16384, fim=True,
               dtype="bfloat16", extra={"partial_rotary_factor": 0.25, "use_qkv_bias": False,
                                        "rope_theta": 1e6, "bos_token_id": 0, "eos_token_id": 0}),
]}


def lookup(name: str) -> ModelEntry:
    """The registry entry `name`; an unknown name raises UnknownNameError with the closest match."""
    if name in REGISTRY:
        return REGISTRY[name]
    raise UnknownNameError(f"unknown model {name!r}{suggest(name, REGISTRY)}; "
                           f"registered: {', '.join(sorted(REGISTRY))}")


def with_path(name: str, path: str | Path) -> ModelEntry:
    """The entry with a local checkpoint directory filled in (align.tiny calls this after building)."""
    return dataclasses.replace(lookup(name), path=str(path))


def build_config(entry: ModelEntry) -> Any:
    """The transformers config: read from a local checkpoint when present, else from the numbers."""
    import transformers

    if entry.path and (Path(entry.path) / "config.json").exists():
        return transformers.AutoConfig.from_pretrained(entry.path)
    keys = _CONFIG_KEYS[entry.architecture]
    kwargs = {cfg_key: getattr(entry, ours) for ours, cfg_key in keys.items()}
    kwargs.update(_KV_TO_CONFIG.get(entry.architecture, lambda kv: {})(entry.n_kv_head))
    kwargs.update(tie_word_embeddings=entry.tie_embeddings, **entry.extra)
    return getattr(transformers, entry.architecture)(**kwargs)


def count_parameters(entry: ModelEntry) -> tuple[int, int]:
    """(total, largest single module's own) parameters, from a `meta`-device model (no memory used).

    Shared (tied) tensors count once, as in DeepSpeed's `model_to_params`; meta tensors have no
    data pointer, so identity is used instead.
    """
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(build_config(entry))
    total = sum({id(p): p.numel() for p in model.parameters()}.values())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


def _zero12(total: int, largest: int, gpus: int, nodes: int, offload: bool) -> tuple[int, int]:
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    return estimate_zero2_model_states_mem_needs(total, num_gpus_per_node=gpus, num_nodes=nodes,
                                                 cpu_offload=offload)


def _zero3(total: int, largest: int, gpus: int, nodes: int, offload: bool) -> tuple[int, int]:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(total, largest, num_gpus_per_node=gpus, num_nodes=nodes,
                                                        cpu_offload=offload, cpu_offload_params=offload)
    return cpu, gpu


# DeepSpeed ships one estimator for stages 1 and 2 (it models stage 2: gradients partitioned),
# so stage 1 is a lower bound. These are the non-printing cores of the `*_all_cold` helpers.
_ESTIMATORS = {1: _zero12, 2: _zero12, 3: _zero3}


def estimate_memory(entry: ModelEntry, zero_stage: int, num_gpus_per_node: int = 1, num_nodes: int = 1,
                    offload: bool = False) -> dict[str, Any]:
    """Model-state memory (params, grads, Adam states; no activations) per GPU and per node's CPU."""
    if zero_stage not in _ESTIMATORS:
        raise ValueError(f"zero_stage must be one of {sorted(_ESTIMATORS)}, got {zero_stage}")
    if num_gpus_per_node < 1 or num_nodes < 1:
        raise ValueError(f"need at least one GPU and one node, got {num_gpus_per_node} x {num_nodes}")
    total, largest = count_parameters(entry)
    cpu, gpu = _ESTIMATORS[zero_stage](total, largest, num_gpus_per_node, num_nodes, offload)
    return {"model": entry.name, "total_params": total, "largest_layer_params": largest,
            "zero_stage": zero_stage, "num_gpus_per_node": num_gpus_per_node, "num_nodes": num_nodes,
            "offload": offload, "gpu_bytes_per_gpu": int(gpu), "cpu_bytes_per_node": int(cpu),
            "gpu_gib_per_gpu": round(gpu / 2**30, 2), "cpu_gib_per_node": round(cpu / 2**30, 2)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--zero", type=int, default=3)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--offload", action="store_true")
    a = ap.parse_args(argv)
    print(json.dumps(estimate_memory(lookup(a.name), a.zero, a.gpus, a.nodes, a.offload)))


if __name__ == "__main__":
    main()
