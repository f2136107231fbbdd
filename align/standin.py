"""`--stand-in`: run a real preset end to end on CPU before spending GPU hours on it.

    python -m align.recipes.rrtf --base starcoder-15b --stand-in data.source=mbpp:PATH@train data.limit=20

The preset is kept as it is, except that
- each model's weights become a small random-init model of the SAME transformers class, built from
  the registry's config with layers and widths shrunk (`stand_in_entry`, a registry entry that builds
  itself with `build`), with the tiny build's tokenizer (align.tiny.train_tokenizer, trained in
  seconds; a simple chat template is added so `chat` templates run);
- GPU-only settings move to their CPU equivalents: vllm -> hf (one replica), bf16/fp16 -> fp32,
  ZeRO-3 offload -> ZeRO-3, flash attention -> sdpa, training workers -> at most 2 CPU processes, no
  GPUs per node, sandbox workers -> 4; max_new_tokens -> at most 128 (random models never stop early);
- eval.limit defaults to 5 problems per benchmark (and per held-out set), and each problem's
  reference solution joins the candidates (sample.include_reference), so that ranking, DPO pairs
  and SFT rows exist although the random models pass nothing.
Models behind the `openai` backend stay as they are (point base_url at a local server). Every
replacement is printed. Tests: tests/align/test_standin.py (slow: one preset per family).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from align.models import ModelEntry, find
from align.recipes.loop_config import RunConfig
from rank.records import content_id

BUILD_VERSION = 1
# Shrunk sizes: 2 layers of width 64 keep each forward well under a millisecond per token on CPU.
SHRINK = {"n_layer": 2, "hidden_size": 64, "n_head": 4, "intermediate_size": 128}
TOKENIZER_VOCAB = 1024
MAX_CONTEXT = 4096            # positions: prompts + 1024 new tokens fit
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
_GPU_BACKENDS = {"vllm"}
_HF_OPTIONS = {"batch_size": 32}
MAX_NEW_TOKENS = 128          # random models never stop early: the preset's 1024 would take minutes on CPU
CPU_WORKERS = 4               # sandboxes per Ray task (2 per core); one replica per model


def cache_root() -> Path:
    import os

    return Path(os.environ.get("RRTF_STANDIN_CACHE", Path.home() / ".cache" / "rrtf-align" / "standin"))


def stand_in_entry(entry: ModelEntry) -> ModelEntry:
    """The entry shrunk: same architecture class and attention kind (MQA/GQA/MHA), small sizes."""
    kv = 1 if entry.n_kv_head == 1 else (SHRINK["n_head"] if entry.n_kv_head == entry.n_head else 2)
    return dataclasses.replace(entry, name=f"stand-in:{entry.name}", hub_id=None, n_kv_head=kv,
                               vocab_size=TOKENIZER_VOCAB, context=min(entry.context, MAX_CONTEXT),
                               dtype="float32", build="align.standin:build", **SHRINK)


def _tokenizer(root: Path):
    """The tiny build's tokenizer (byte-level BPE on the built-in tasks), with a chat template; cached."""
    from transformers import AutoTokenizer

    path = root / f"tokenizer-v{BUILD_VERSION}"
    if not (path / "tokenizer.json").exists():
        from align.tiny import TinyConfig, corpus, train_tokenizer

        tok = train_tokenizer(corpus(TinyConfig(n_train_problems=1000)), TOKENIZER_VOCAB)
        tok.chat_template = CHAT_TEMPLATE
        tmp = path.with_name(path.name + f".tmp{id(tok)}")
        tok.save_pretrained(tmp)
        tmp.rename(path) if not path.exists() else None
    return AutoTokenizer.from_pretrained(path)


def build(entry: ModelEntry, options: dict, log: Callable[[str], None] = print) -> str:
    """Builder of stand-in entries: a random-init model of the entry's class, saved once under the cache."""
    import torch
    from transformers import AutoModelForCausalLM

    from align.models import transformers_config

    root = cache_root()
    path = root / content_id(BUILD_VERSION, dataclasses.asdict(entry))
    if (path / "config.json").exists():
        return str(path)
    tok = _tokenizer(root)
    config = transformers_config(entry)
    # The tokenizer's ids and size (BPE may stop below TOKENIZER_VOCAB), so generation stops at EOS.
    config.vocab_size = len(tok)
    for key, value in {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                       "pad_token_id": tok.pad_token_id}.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(path)
    n = sum(p.numel() for p in model.parameters())
    log(f"stand-in {entry.name}: random-init {type(model).__name__} ({n / 1e6:.2f}M parameters) at {path}")
    return str(path)


def _cpu_options(options: dict[str, Any]) -> dict[str, Any]:
    return {**_HF_OPTIONS, **{k: v for k, v in options.items() if k in ("batch_size", "trust_remote_code")}}


def apply(cfg: RunConfig) -> tuple[RunConfig, list[str], dict[str, ModelEntry]]:
    """The config with GPU-only settings moved to CPU, the list of replacements (for the user), and
    the stand-in registry entry of each model reference (it builds itself: align.models.materialize)."""
    from align.config_loader import ConfigError

    cfg = dataclasses.replace(cfg)   # shallow; every section changed below is replaced, not mutated
    said: list[str] = []
    entries: dict[str, ModelEntry] = {}
    models = dataclasses.replace(cfg.models)
    specs = []
    for spec in [models.student, *models.teachers]:
        if spec.backend == "openai":
            # Served elsewhere: weights and options stay; one actor, as Ray here has 2 CPUs to place them.
            said.append(f"{spec.ref}: kept (openai backend at {spec.options.get('base_url', 'the default URL')}), "
                        f"replicas {spec.replicas} -> 1")
            specs.append(dataclasses.replace(spec, replicas=1))
            continue
        entry = find(spec.ref)
        if entry is None:
            raise ConfigError(f"--stand-in: {spec.ref!r} is not in the model registry (align.models), so its "
                              "architecture is unknown; add an entry or use a registry name")
        small = stand_in_entry(entry)
        entries[spec.ref] = small
        said.append(f"{spec.ref}: weights -> random-init {entry.architecture.replace('Config', '')} "
                    f"{small.n_layer} layers x {small.hidden_size} wide, {small.n_kv_head} kv head(s), the tiny tokenizer")
        new = dataclasses.replace(spec, options=_cpu_options(spec.options), replicas=1,
                                  backend="hf" if spec.backend in _GPU_BACKENDS else spec.backend,
                                  sample=dataclasses.replace(spec.sample, max_new_tokens=min(
                                      spec.sample.max_new_tokens, MAX_NEW_TOKENS)))
        said.append(f"{spec.ref}: {spec.backend} {spec.options} x{spec.replicas} -> {new.backend} {new.options} x1, "
                    f"max_new_tokens {spec.sample.max_new_tokens} -> {new.sample.max_new_tokens}")
        specs.append(new)
    cfg.models = dataclasses.replace(models, student=specs[0], teachers=specs[1:])

    t = cfg.train
    args, trl = dict(t.args), dict(t.trl)
    for section in (args, trl):
        for key in ("bf16", "fp16", "tf32"):
            if section.get(key):
                section[key] = False
                said.append(f"train: {key} -> fp32")
    init = dict(t.model_init_kwargs)
    if init.get("dtype") not in (None, "float32", "auto"):
        said.append(f"train.model_init_kwargs.dtype: {init['dtype']} -> float32")
        init["dtype"] = "float32"
    if init.get("attn_implementation") == "flash_attention_2":
        init["attn_implementation"] = "sdpa"
        said.append("train.model_init_kwargs.attn_implementation: flash_attention_2 -> sdpa")
    workers = min(t.num_workers, 2)
    deepspeed = "zero3" if t.deepspeed == "zero3_offload" else t.deepspeed
    if t.launcher != "inprocess":
        args["use_cpu"] = True    # accelerate needs it to join DeepSpeed's gloo group on CPU (docs/design.md §12)
    if (workers, deepspeed) != (t.num_workers, t.deepspeed) or t.num_gpus_per_node:
        said.append(f"train: {t.num_workers} workers x {t.num_gpus_per_node} GPUs, {t.deepspeed} -> "
                    f"{workers} CPU processes, {deepspeed}")
    cfg.train = dataclasses.replace(t, args=args, trl=trl, model_init_kwargs=init, num_workers=workers,
                                    deepspeed=deepspeed, num_gpus_per_node=0)
    if cfg.execute.workers > CPU_WORKERS:
        said.append(f"execute.workers: {cfg.execute.workers} -> {CPU_WORKERS}")
        cfg.execute = dataclasses.replace(cfg.execute, workers=CPU_WORKERS)
    if cfg.eval.max_new_tokens > MAX_NEW_TOKENS:
        said.append(f"eval.max_new_tokens: {cfg.eval.max_new_tokens} -> {MAX_NEW_TOKENS}")
        cfg.eval = dataclasses.replace(cfg.eval, max_new_tokens=MAX_NEW_TOKENS)
    if cfg.eval.limit is None:
        cfg.eval = dataclasses.replace(cfg.eval, limit=5)
        said.append("eval.limit: none -> 5 problems per benchmark")
    if cfg.data.n_heldout > cfg.eval.limit:
        said.append(f"data.n_heldout: {cfg.data.n_heldout} -> {cfg.eval.limit} (the built-in held-out tasks)")
        cfg.data = dataclasses.replace(cfg.data, n_heldout=cfg.eval.limit)
    if not cfg.sample.include_reference:
        cfg.sample = dataclasses.replace(cfg.sample, include_reference=True)
        said.append("sample.include_reference -> true (random models pass nothing; references give "
                    "ranking, DPO and SFT real rows)")
    return cfg, said, entries
