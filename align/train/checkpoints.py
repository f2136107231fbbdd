"""Resume, save and LoRA-merge for any `transformers.Trainer` run in one output_dir.

Shared by the TRL trainers (align/train/trl_train.py) and the ranking trainer (align/train/rank_trainer.py):

    trainer = SomeTrainer(model=get_peft_model(model, lora_config(lora)), args=args, ...)
    metrics = fit(trainer, output_dir, tokenizer, merge_lora=lora is not None)

Rerunning the same job with a larger max_steps continues from output_dir's newest checkpoint-N.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rank.records import write_jsonl

LOG_HISTORY = "log_history.jsonl"   # one JSON object per Trainer.log call, beside the saved model


def last_checkpoint(output_dir: str | Path, requested: str | bool | None = None) -> str | None:
    """`requested` (TrainingArguments.resume_from_checkpoint) if set, else the newest checkpoint-N in output_dir."""
    from transformers.trainer_utils import get_last_checkpoint

    if requested:
        return requested
    return get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None


def lora_config(lora: dict | None):
    """`peft.LoraConfig(**lora)` for a causal LM, or None."""
    if lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(**{"task_type": "CAUSAL_LM", **lora})


def zero3_checkpointing(args) -> None:
    """Under ZeRO-3 with activation checkpointing, make it reentrant unless the user said otherwise.

    transformers 5 defaults to non-reentrant checkpointing; with it the ranking trainer's shared-prompt
    replay under ZeRO-3 fails in backward on a partitioned weight ("size of tensor a (0) must match the
    size of tensor b (64)", the starcoder-15b preset on 2 CPU ranks), while reentrant checkpointing (TRL's
    choice for PEFT + ZeRO-3, see peft_model) trains. `args` (TrainingArguments) is edited in place.
    """
    from transformers.integrations import is_deepspeed_zero3_enabled

    if _checkpointing(args) and is_deepspeed_zero3_enabled() and "use_reentrant" not in _checkpointing_kwargs(args):
        import logging

        logging.getLogger(__name__).warning("ZeRO-3 with activation checkpointing: use_reentrant=True")
        _set_checkpointing_kwargs(args, use_reentrant=True)


# transformers 5 renamed gradient_checkpointing(_kwargs) to activation_checkpointing(_kwargs); the Trainer
# reads the new names, which a write to the old attribute after construction does not reach.
def _checkpointing(args) -> bool:
    return bool(getattr(args, "activation_checkpointing", None) or getattr(args, "gradient_checkpointing", None))


def _checkpointing_kwargs(args) -> dict:
    return dict(getattr(args, "activation_checkpointing_kwargs", None) or args.gradient_checkpointing_kwargs or {})


def _set_checkpointing_kwargs(args, **kwargs) -> None:
    merged = {**_checkpointing_kwargs(args), **kwargs}
    for name in ("activation_checkpointing_kwargs", "gradient_checkpointing_kwargs"):
        if hasattr(args, name):
            setattr(args, name, merged)


def peft_model(model, lora: dict, args):
    """`peft.get_peft_model` with the two workarounds TRL's trainers apply for PEFT under DeepSpeed ZeRO-3.

    1. The adapter keeps the base model's dtype (`autocast_adapter_dtype=False`): PEFT would upcast it to
       fp32 under a bf16 base, and ZeRO-3 gathers persistent parameters into one buffer of the first one's
       dtype, so mixed dtypes fail on the first optimizer step (TRL issue 6089, DeepSpeed issue 8072).
    2. Activation checkpointing is reentrant (`args.activation_checkpointing_kwargs["use_reentrant"] = True`):
       PEFT + ZeRO-3 train wrongly otherwise (TRL issue 2514). With checkpointing, PEFT also needs
       `enable_input_require_grads()`, or no gradient reaches the adapters of a frozen embedding.
    `args` (TrainingArguments) is edited in place; create it before this call, so ZeRO-3 is known.
    """
    import logging

    from peft import get_peft_model
    from transformers.integrations import is_deepspeed_zero3_enabled

    zero3 = is_deepspeed_zero3_enabled()
    model = get_peft_model(model, lora_config(lora), **({"autocast_adapter_dtype": False} if zero3 else {}))
    if _checkpointing(args):
        if zero3:
            if _checkpointing_kwargs(args).get("use_reentrant") is False:
                logging.getLogger(__name__).warning("LoRA under ZeRO-3: use_reentrant=False overridden to True")
            _set_checkpointing_kwargs(args, use_reentrant=True)
        model.enable_input_require_grads()
    return model


def fit(trainer, output_dir: str | Path, tokenizer, merge_lora: bool) -> dict[str, Any]:
    """Train (resuming from the newest checkpoint in output_dir), save model + tokenizer, return metrics.

    Metrics: the Trainer's, global_step, resumed_from (None for a fresh start) and last_loss; the whole
    `trainer.state.log_history` goes to output_dir/log_history.jsonl.
    """
    output_dir = Path(output_dir)
    resume = last_checkpoint(output_dir, trainer.args.resume_from_checkpoint)
    out = trainer.train(resume_from_checkpoint=resume)
    lora = merge_lora and hasattr(trainer.model, "peft_config")
    # A LoRA run saves its adapter to output_dir/adapter and the merged full model to output_dir, so the
    # next stage (sampling, eval, another round) loads output_dir like any other checkpoint.
    trainer.save_model(str(output_dir / "adapter") if lora else str(output_dir))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(output_dir))
        # Every logged step (loss, and the ranking trainer's rank_loss/ft_loss): align.report draws the curves.
        write_jsonl(output_dir / LOG_HISTORY, trainer.state.log_history)
        if lora:
            merge_adapter(output_dir)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    metrics = dict(out.metrics, global_step=out.global_step, resumed_from=resume)
    if losses:
        metrics["last_loss"] = losses[-1]
    if not math.isfinite(metrics.get("train_loss", 0.0)):
        raise FloatingPointError(f"training loss is not finite: {metrics}")
    return metrics


def merge_adapter(output_dir: str | Path) -> None:
    """Merge output_dir/adapter into its base model and save the full model to output_dir (one process)."""
    from peft import AutoPeftModelForCausalLM
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    output_dir = Path(output_dir)
    # Training is over; under ZeRO-3 the trainer's config would make this rank-0-only load partition the
    # base model and gather it with collectives the other ranks never join (a hang).
    unset_hf_deepspeed_config()
    model = AutoPeftModelForCausalLM.from_pretrained(str(output_dir / "adapter"))
    model.merge_and_unload().save_pretrained(str(output_dir))
    for stray in ("adapter_config.json", "adapter_model.safetensors"):  # never shadow the merged weights
        (output_dir / stray).unlink(missing_ok=True)
