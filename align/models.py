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
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rank.plugins import UnknownNameError, resolve, suggest


@dataclass(frozen=True)
class ModelEntry:
    name: str
    hub_id: str | None            # None: a model built locally by `build` (the tiny CPU models)
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
    # "package.module:function" building the checkpoint here: f(entry, options, log) -> local path.
    build: str | None = None

    @property
    def source(self) -> str:
        """What `from_pretrained` should load for a hub model (built models: `resolve_ref`)."""
        if self.hub_id is None:
            raise ValueError(f"model {self.name!r} is built locally: use align.models.resolve_ref")
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
    *(ModelEntry(f"tiny:{role}", None, "GPTBigCodeConfig", n_layer=2, hidden_size=128, n_head=4, n_kv_head=1,
                 vocab_size=600, intermediate_size=512, context=256, fim=True, dtype="float32",
                 tie_embeddings=True, extra={"bos_token_id": None, "eos_token_id": None},
                 build="align.models:build_tiny") for role in ("student", "teacher")),
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
    # Teachers of the presets. WizardCoder (arXiv:2306.08568) is StarCoder-15B with one added pad token.
    ModelEntry("wizardcoder-15b", "WizardLMTeam/WizardCoder-15B-V1.0", "GPTBigCodeConfig", n_layer=40,
               hidden_size=6144, n_head=48, n_kv_head=1, vocab_size=49153, intermediate_size=24576, context=8192,
               fim=False, dtype="float16", tie_embeddings=True, extra={"bos_token_id": 0, "eos_token_id": 0}),
    ModelEntry("codellama-34b-instruct", "codellama/CodeLlama-34b-Instruct-hf", "LlamaConfig", n_layer=48,
               hidden_size=8192, n_head=64, n_kv_head=8, vocab_size=32000, intermediate_size=22016,
               context=16384, fim=False, dtype="bfloat16", extra={"rope_theta": 1e6}),
    ModelEntry("stable-code-instruct-3b", "stabilityai/stable-code-instruct-3b", "StableLmConfig", n_layer=32,
               hidden_size=2560, n_head=32, n_kv_head=32, vocab_size=50304, intermediate_size=6912,
               context=16384, fim=False, dtype="bfloat16",
               extra={"partial_rotary_factor": 0.25, "use_qkv_bias": False, "rope_theta": 1e6}),
]}
_BY_HUB_ID = {e.hub_id: e for e in REGISTRY.values() if e.hub_id}


def lookup(name: str) -> ModelEntry:
    """The registry entry `name` (or the entry of hub id `name`); an unknown name raises
    UnknownNameError with the closest match."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name in _BY_HUB_ID:
        return _BY_HUB_ID[name]
    raise UnknownNameError(f"unknown model {name!r}{suggest(name, REGISTRY)}; "
                           f"registered: {', '.join(sorted(REGISTRY))}")


def find(ref: str) -> ModelEntry | None:
    """The entry for a registry name or a registered hub id; None for other hub ids and paths."""
    return REGISTRY.get(ref) or _BY_HUB_ID.get(ref)


def check_ref(ref: str) -> None:
    """Refuse a reference that is no registry name, no existing path and no `org/name` hub id."""
    if not ref:
        raise UnknownNameError("model reference is empty: set ref (a registry name, hub id or path)")
    if find(ref) or Path(ref).exists() or (ref.count("/") == 1 and all(ref.split("/"))
                                           and not ref.startswith((".", "/"))):
        return
    raise UnknownNameError(f"unknown model {ref!r}{suggest(ref, REGISTRY)}: not a registry name "
                           f"({', '.join(sorted(REGISTRY))}), an existing path, or a hub id org/name")


def resolve_ref(ref: str, build_options: dict | None = None, log=print) -> str:
    """What `from_pretrained` loads for `ref`: a built entry's local checkpoint (built once, cached),
    a registered hub id, or `ref` itself (a path or another hub id)."""
    entry = find(ref)
    return ref if entry is None else materialize(entry, build_options, log)


def materialize(entry: ModelEntry, build_options: dict | None = None, log=print) -> str:
    """A local checkpoint for a built entry (its `build` function, cached), else the hub id."""
    if entry.build:
        return str(resolve({}, entry.build, "model builder")(entry, build_options or {}, log))
    return entry.source


def build_tiny(entry: ModelEntry, options: dict, log=print) -> str:
    """Builder of the tiny:student / tiny:teacher entries: align.tiny's cached CPU pretraining;
    `options` are align.tiny.TinyConfig fields (the run config's `tiny` section)."""
    from align.tiny import TinyConfig, build_tiny as build

    models = build(TinyConfig(**options), log=log)
    return str(models.student_path if entry.name == "tiny:student" else models.teacher_path)


def transformers_config(entry: ModelEntry) -> Any:
    """The transformers config from the registry's numbers (nothing downloaded)."""
    import transformers

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
        model = AutoModelForCausalLM.from_config(transformers_config(entry))
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
