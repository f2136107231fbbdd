"""`--dry-run`: the resolved plan of a loop recipe: models, data, memory (DeepSpeed's estimator) and time.

    python -m align.recipes.rrtf --base starcoder-15b --dry-run
    python -m align.recipes.rrtf --base starcoder-15b --dry-run plan.mfu=0.45 plan.prompts=20000

Nothing is downloaded: parameter counts come from the registry's architecture numbers. Time comes
from token counts: generated tokens / (tokens/s per GPU x GPUs) for sampling; 6·N·tokens training
FLOPs (Kaplan et al., arXiv:2001.08361 §2.1), plus 2·N·tokens for DPO's reference forward, at a
stated MFU for GPU-hours; activation memory per GPU from Korthikanti et al. (arXiv:2205.05198 §4.1):
s·b·h·34 bytes per layer in 16-bit without recomputation (attention scores not kept: SDPA/flash
attention), 2·s·b·h per layer plus one layer's full set with full activation checkpointing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from align.recipes.loop_config import RunConfig

_ZERO_STAGE = {"zero2": 2, "zero3": 3, "zero3_offload": 3}


def _model_line(spec) -> str:
    from align.models import find

    e = find(spec.ref)
    how = f"[{spec.backend}, template {spec.template}, n={spec.sample.n}, x{spec.replicas}]"
    if e is None:
        return f"{spec.ref}: {'local path' if Path(spec.ref).exists() else 'hub id (not in the registry)'} {how}"
    origin = e.hub_id or f"built here by {e.build}"
    return f"{spec.ref}: {origin} ({e.architecture}, {e.n_layer} layers, hidden {e.hidden_size}) {how}"


@dataclass
class Estimate:
    prompts: int
    prompts_counted: bool          # counted from data.source on disk (else plan.prompts)
    sample_tokens: int             # generated, every model
    sample_gpu_hours: float
    sample_hours: float            # wall clock on the node(s)
    train_rows: int                # sequences per epoch (prompt, response)
    train_tokens: int              # per epoch
    steps: int
    train_flops: float
    train_gpu_hours: float
    train_hours: float
    activation_gib: float          # per GPU, no recomputation
    activation_ckpt_gib: float     # per GPU, full activation checkpointing


def _prompts(cfg: RunConfig) -> tuple[int, bool]:
    src = cfg.data.source
    if src.split("@")[0] == "tasks":
        return cfg.data.limit or cfg.data.n_train, True
    path = src.partition(":")[2].rpartition("@")[0] or src.partition(":")[2] if ":" in src else src
    if path and Path(path).is_file():
        from evol.seeds import load_source

        return len(load_source(src, cfg.data.limit, fields=cfg.data.fields or None)), True
    return cfg.data.limit or cfg.plan.prompts, False


def estimate(cfg: RunConfig, n_params: int, hidden: int, n_layer: int) -> Estimate:
    """Tokens, steps, FLOPs and hours of one run of the loop (see the module docstring for the model)."""
    from align.train.config import trainer_options

    p, t = cfg.plan, cfg.train
    prompts, counted = _prompts(cfg)
    specs = [cfg.models.student, *cfg.models.teachers]
    # a response stops at EOS: the mean response, at most the model's max_new_tokens
    resp = {s.ref: min(p.response_tokens, s.sample.max_new_tokens) for s in specs}
    sample_tokens = sum(prompts * s.sample.n * resp[s.ref] for s in specs)
    gpus = max(1, t.num_gpus_per_node * t.num_nodes)
    sample_gpu_h = sample_tokens / p.sample_tokens_per_s_per_gpu / 3600
    k = sum(s.sample.n for s in specs)
    seq = p.prompt_tokens + p.response_tokens
    # Sequences per epoch, by method: RRTF/RRHF score every response of a kept prompt (upper bound: none
    # dropped); DPO one chosen + one rejected per pair (best_vs_worst: one pair per prompt); SFT one passing
    # response per prompt.
    per_prompt = {"rrtf": k, "rrhf": k, "dpo": 2, "sft": 1}.get(cfg.method, k)
    rows = prompts * per_prompt
    a = trainer_options(t, cfg.method)
    epochs = float(a.get("num_train_epochs", 3))
    per_dev, accum = a.get("per_device_train_batch_size", 8), a.get("gradient_accumulation_steps", 1)
    world = t.num_workers if t.launcher != "inprocess" else 1
    global_batch = per_dev * accum * world            # prompts (rank methods) or rows (TRL) per step
    units = prompts if cfg.method in ("rrtf", "rrhf") else rows // (2 if cfg.method == "dpo" else 1)
    steps = math.ceil(units / global_batch) * math.ceil(epochs)
    tokens = rows * seq
    ref_forward = 2 if cfg.method == "dpo" else 0    # the frozen reference model's forward (precomputed or not)
    flops = (6 + ref_forward) * n_params * tokens * epochs
    train_gpu_h = flops / (p.peak_tflops * 1e12 * p.mfu) / 3600
    # Activations of one micro-batch per GPU: per_dev prompts x their sequences (all k for rank methods).
    b = per_dev * (per_prompt if cfg.method in ("rrtf", "rrhf", "dpo") else 1)
    act = seq * b * hidden * 34 * n_layer
    act_ckpt = 2 * seq * b * hidden * n_layer + seq * b * hidden * 34
    return Estimate(prompts, counted, sample_tokens, sample_gpu_h, sample_gpu_h / gpus, rows, tokens, steps,
                    flops, train_gpu_h, train_gpu_h / gpus, act / 2**30, act_ckpt / 2**30)


def describe(cfg: RunConfig) -> str:
    from align.models import count_parameters, estimate_memory, find
    from align.train.config import trainer_options

    t = cfg.train
    a = trainer_options(t, cfg.method)   # the one merge of train.args and train.trl
    per_dev = a.get("per_device_train_batch_size", 8)
    accum = a.get("gradient_accumulation_steps", 1)
    world = t.num_workers if t.launcher != "inprocess" else 1
    stage = _ZERO_STAGE.get(t.deepspeed or "", 0)
    lines = [f"plan for {cfg.name} ({cfg.method}, base {cfg.base})", "",
             "models:"] + [f"  {_model_line(r)}" for r in [cfg.models.student, *cfg.models.teachers]]
    src = cfg.data.source
    k = cfg.models.student.sample.n + sum(m.sample.n for m in cfg.models.teachers)
    lines += ["", "data:", f"  seeds: {src}" + (f" (first {cfg.data.limit})" if cfg.data.limit else "")
              + f"; Evol-Instruct rounds: {cfg.evolve.rounds}",
              f"  samples per problem: {k} (student {cfg.models.student.sample.n}, "
              f"teachers {'+'.join(str(m.sample.n) for m in cfg.models.teachers)})",
              f"  ranking: {cfg.rank.strategy}; sandbox workers per task: {cfg.execute.workers}",
              "", "training:",
              f"  method: {cfg.method}" + (f" (loss {t.loss})" if cfg.method in ("rrtf", "rrhf") else " (TRL)")
              + f"; launcher: {t.launcher} x {world} worker(s), "
              + (f"{t.num_gpus_per_node} GPU(s)/node x {t.num_nodes} node(s)" if t.num_gpus_per_node else "CPU"),
              f"  global batch: {per_dev} per device x {accum} accumulation x {world} worker(s) = "
              f"{per_dev * accum * world} " + ("prompts" if cfg.method in ("rrtf", "rrhf") else "rows"),
              f"  DeepSpeed: {t.deepspeed or 'off'} (ZeRO stage {stage}); LoRA: {'on' if t.lora else 'off'}",
              f"  epochs: {a.get('num_train_epochs', 'default')}; lr: {a.get('learning_rate', 'default')}; "
              f"bf16: {a.get('bf16', False)}"]
    entry = find(cfg.models.student.ref)
    if entry is None:
        lines += ["", f"memory and time estimates: unavailable ({cfg.models.student.ref!r} is not in the registry)"]
        return "\n".join(lines)
    gpus = max(1, t.num_gpus_per_node)
    est = estimate_memory(entry, zero_stage=stage or 2, num_gpus_per_node=gpus, num_nodes=t.num_nodes,
                          offload=t.deepspeed == "zero3_offload")
    lines += ["", f"memory estimate, ZeRO stage {est['zero_stage']} (DeepSpeed's estimator; model states):",
              f"  parameters: {est['total_params'] / 1e9:.2f}B "
              f"(largest layer {est['largest_layer_params'] / 1e6:.0f}M)",
              f"  per GPU: {est['gpu_gib_per_gpu']} GiB; CPU per node: {est['cpu_gib_per_node']} GiB "
              f"({est['num_gpus_per_node']} GPUs x {est['num_nodes']} node(s), "
              f"offload {'on' if est['offload'] else 'off'})"]
    n_params, _ = count_parameters(entry)
    e = estimate(cfg, n_params, entry.hidden_size, entry.n_layer)
    p = cfg.plan
    lines += ["  activations per GPU (16-bit, one micro-batch): "
              f"{e.activation_gib:.1f} GiB without, {e.activation_ckpt_gib:.1f} GiB with gradient checkpointing "
              f"({'on' if a.get('gradient_checkpointing') else 'off'} in this preset)",
              "", f"time estimate (assumptions: plan.* = {p.prompt_tokens} prompt / {p.response_tokens} response "
              f"tokens, {p.sample_tokens_per_s_per_gpu:.0f} sampled tokens/s per GPU, {p.gpu} at "
              f"{p.peak_tflops:.0f} TFLOPS x MFU {p.mfu}):",
              f"  prompts: {e.prompts:,}" + ("" if e.prompts_counted else
                                              " (plan.prompts: data.source is not on disk; PanGu-Coder2's 68K)"),
              f"  sampling: {e.sample_tokens / 1e6:,.1f}M generated tokens = {e.sample_gpu_hours:,.1f} GPU-hours "
              f"= {e.sample_hours:,.1f} h on {max(1, t.num_gpus_per_node) * t.num_nodes} GPU(s)",
              f"  training: {e.train_rows:,} sequences x {p.prompt_tokens + p.response_tokens} tokens = "
              f"{e.train_tokens / 1e6:,.1f}M tokens per epoch; {e.steps:,} optimizer steps",
              f"  training FLOPs: {e.train_flops:.2e} ({'8' if cfg.method == 'dpo' else '6'}·N·tokens·epochs) = "
              f"{e.train_gpu_hours:,.1f} GPU-hours = {e.train_hours:,.1f} h on "
              f"{max(1, t.num_gpus_per_node) * t.num_nodes} GPU(s)"]
    return "\n".join(lines)
