"""`--dry-run`: the resolved plan of a loop recipe, with DeepSpeed's per-GPU memory estimate.

Nothing is downloaded: parameter counts come from the registry's architecture numbers.
"""
from __future__ import annotations

from pathlib import Path

from align.pipeline_config import RunConfig

_ZERO_STAGE = {"zero2": 2, "zero3": 3, "zero3_offload": 3}


def _model_line(spec) -> str:
    from align.models import find

    e = find(spec.ref)
    how = f"[{spec.backend}, template {spec.template}, n={spec.sample.n}, x{spec.replicas}]"
    if e is None:
        return f"{spec.ref}: {'local path' if Path(spec.ref).exists() else 'hub id (not in the registry)'} {how}"
    origin = e.hub_id or f"built here by {e.build}"
    return f"{spec.ref}: {origin} ({e.architecture}, {e.n_layer} layers, hidden {e.hidden_size}) {how}"


def describe(cfg: RunConfig) -> str:
    from align.models import estimate_memory
    from align.train.config import trainer_options

    t = cfg.train
    a = trainer_options(t, cfg.method)   # the one merge of train.args and train.trl
    per_dev = a.get("per_device_train_batch_size", 8)
    accum = a.get("gradient_accumulation_steps", 1)
    gpus = t.num_gpus_per_node * t.num_nodes if t.launcher != "inprocess" else 1
    stage = _ZERO_STAGE.get(t.deepspeed or "", 0)
    lines = [f"plan for {cfg.name} ({cfg.method}, base {cfg.base})", "",
             "models:"] + [f"  {_model_line(r)}" for r in [cfg.models.student, *cfg.models.teachers]]
    src = cfg.data.source
    seeds = f"{cfg.data.n_train} built-in tasks" if src == "tasks" else src
    if src not in ("tasks",) and ":" not in src and not Path(src).exists():
        seeds += "  (MISSING: set data.source=PATH before a real run)"
    k = cfg.models.student.sample.n + sum(t.sample.n for t in cfg.models.teachers)
    lines += ["", "data:", f"  seeds: {seeds}; Evol-Instruct rounds: {cfg.evolve.rounds}",
              f"  samples per problem: {k} (student {cfg.models.student.sample.n}, "
              f"teachers {'+'.join(str(t.sample.n) for t in cfg.models.teachers)})",
              f"  ranking: {cfg.rank.strategy}; sandbox workers per task: {cfg.execute.workers}",
              "", "training:",
              f"  method: {cfg.method}" + (f" (loss {t.loss})" if cfg.method in ("rrtf", "rrhf") else " (TRL)")
              + f"; launcher: {t.launcher} x {t.num_workers}",
              f"  global batch: {per_dev} per device x {accum} accumulation x {gpus} GPU(s) = {per_dev * accum * gpus} prompts",
              f"  DeepSpeed: {t.deepspeed or 'off'} (ZeRO stage {stage}); LoRA: {'on' if t.lora else 'off'}",
              f"  epochs: {a.get('num_train_epochs', 'default')}; lr: {a.get('learning_rate', 'default')}; "
              f"bf16: {a.get('bf16', False)}"]
    from align.models import find
    entry = find(cfg.models.student.ref)
    if entry is None:
        lines += ["", f"memory estimate: unavailable ({cfg.models.student!r} is not in the registry)"]
    else:
        est = estimate_memory(entry, zero_stage=stage or 2, num_gpus_per_node=t.num_gpus_per_node,
                              num_nodes=t.num_nodes, offload=t.deepspeed == "zero3_offload")
        lines += ["", f"memory estimate, ZeRO stage {est['zero_stage']} (DeepSpeed's estimator; model "
                  "states only, activations extra):",
                  f"  parameters: {est['total_params'] / 1e9:.2f}B "
                  f"(largest layer {est['largest_layer_params'] / 1e6:.0f}M)",
                  f"  per GPU: {est['gpu_gib_per_gpu']} GiB; CPU per node: {est['cpu_gib_per_node']} GiB "
                  f"({est['num_gpus_per_node']} GPUs x {est['num_nodes']} node(s), "
                  f"offload {'on' if est['offload'] else 'off'})"]
    return "\n".join(lines)
