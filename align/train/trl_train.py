"""DPO and SFT through TRL's own trainers (`trl.DPOTrainer`, `trl.SFTTrainer`), from plain rows.

    from align.train.trl_train import train_dpo, train_sft
    train_dpo("runs/x/model", [{"prompt": p, "chosen": c, "rejected": r}], "runs/x/dpo",
              {"beta": 0.1, "max_steps": 100, "per_device_train_batch_size": 4})
    train_sft("runs/x/model", [{"prompt": p, "completion": c}], "runs/x/sft", {"packing": True})

Rows hold the student's training text (align.templates.training_text: its sampling template). `config` holds overrides of TRL's own
`DPOConfig`/`SFTConfig` (which subclass `transformers.TrainingArguments`): options are passed through,
never mirrored here, so any TRL option (loss_type, packing, gradient_checkpointing, deepspeed, ...) works
and an unknown one is TRL's error, re-raised naming the key with close matches. Under torchrun or Ray Train
the same functions run on every rank (see align/train/distributed.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

from align.tokenization import encode
from align.train.checkpoints import fit, lora_config, zero3_checkpointing
from rank.plugins import suggest

DPO_FIELDS = ("prompt", "chosen", "rejected")
SFT_FIELDS = ("prompt", "completion")


class UnknownOptionError(ValueError):
    """A config key that the TRL config class does not have."""


def cpu_safe_defaults() -> dict[str, Any]:
    """Defaults that make TRL's configs run on a CPU-only machine, single- or multi-process.

    TRL defaults to bf16=True, which fails on CPU; use_cpu=True is also what makes accelerate pick gloo
    under torchrun (without it DeepSpeed and accelerate disagree on the world size, docs/design.md §12).
    """
    import torch

    # logging_steps=1: short runs still log a loss (TRL's default is every 10 steps).
    defaults: dict[str, Any] = {"report_to": [], "logging_steps": 1}
    if not torch.cuda.is_available():
        defaults.update(bf16=False, use_cpu=True)
    return defaults


def build_config(config_cls: type, overrides: dict[str, Any], output_dir: str | Path) -> Any:
    """`config_cls(**defaults, **overrides, output_dir=...)`; unknown keys name the key and suggest."""
    kwargs = {**cpu_safe_defaults(), **overrides, "output_dir": str(output_dir)}
    try:
        return config_cls(**kwargs)
    except TypeError as err:
        names = [f.name for f in dataclasses.fields(config_cls) if f.init]
        unknown = [k for k in overrides if k not in names]
        if not unknown:
            raise
        parts = [f"{key!r}{suggest(key, names)}" for key in unknown]
        raise UnknownOptionError(f"unknown {config_cls.__name__} option {'; '.join(parts)}") from err


def _completion(text: str, eos: str) -> str:
    # Same document shape as format_example: code, one newline, EOS. TRL appends EOS only when missing,
    # so adding it here keeps the trained text identical to the pretraining and sampling format.
    if text.endswith(eos):
        text = text[: -len(eos)]
    return text.strip("\n") + "\n" + eos


def _dataset(rows: Iterable[dict], fields: tuple[str, ...], eos: str, completions: tuple[str, ...]):
    from datasets import Dataset

    clean = []
    for i, row in enumerate(rows):
        missing = [f for f in fields if not isinstance(row.get(f), str)]
        if missing:
            raise ValueError(f"training row {i}: missing or non-string field(s) {missing}; needs {list(fields)}")
        clean.append({f: _completion(row[f], eos) if f in completions else row[f] for f in fields})
    if not clean:
        raise ValueError("no training rows")
    return Dataset.from_list(clean)


def _on_disk(data, output_dir: str | Path, args):
    """`data` saved under output_dir/datasets/<content hash> and loaded back from there.

    TRL's `precompute_ref_log_probs` caches the reference log-probs in a file next to the dataset's own
    files: for an in-memory dataset that is a random per-process temporary directory, so rank 0 writes
    it where no other rank looks (they fail reading it). On disk in output_dir, every rank (every node, on
    shared storage) reads the one file rank 0 wrote. The first process writes; the others wait for it.
    """
    from datasets import load_from_disk

    digest = hashlib.sha256(json.dumps(data.to_list(), sort_keys=True).encode()).hexdigest()[:16]
    path = Path(output_dir) / "datasets" / digest
    with args.main_process_first(desc="training rows on disk", local=False):
        if not path.is_dir():
            tmp = path.with_name(f".{digest}.{os.getpid()}")
            data.save_to_disk(str(tmp))
            tmp.replace(path)   # atomic: a half-written dataset is never loaded
        return load_from_disk(str(path))


def length_stats(tokenizer, rows: list[dict], completions: tuple[str, ...], max_length: int | None) -> dict:
    """How many (prompt, completion) sequences exceed `max_length` (TRL truncates them), by
    align.tokenization's rule; goes into the train stage's stats."""
    stats = {"max_length": max_length, "sequences": 0, "over_max_length": 0, "prompts_over_max_length": 0,
             "longest": 0}
    for row in rows:
        prompt, done = encode(tokenizer, row["prompt"], [row[key] for key in completions])
        stats["prompts_over_max_length"] += max_length is not None and len(prompt) >= max_length
        for ids in done:
            n = len(prompt) + len(ids)
            stats["sequences"] += 1
            stats["over_max_length"] += max_length is not None and n > max_length
            stats["longest"] = max(stats["longest"], n)
    return stats


def _tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def dpo_trainer(
    model_path: str | Path,
    rows: Iterable[dict],
    output_dir: str | Path,
    config: dict[str, Any] | None = None,
    tokenizer_path: str | Path | None = None,
    ref_model_path: str | Path | None = None,
    lora: dict | None = None,
):
    """A ready `trl.DPOTrainer` on {prompt, chosen, rejected} rows; config overrides `trl.DPOConfig`."""
    from trl import DPOConfig, DPOTrainer

    args = build_config(DPOConfig, dict(config or {}), output_dir)
    zero3_checkpointing(args)   # as the ranking trainer does under ZeRO-3
    tok = _tokenizer(tokenizer_path or model_path)
    data = _dataset(rows, DPO_FIELDS, tok.eos_token, completions=("chosen", "rejected"))
    if args.precompute_ref_log_probs:
        data = _on_disk(data, output_dir, args)
    ref = None
    if ref_model_path is not None:
        from transformers import AutoModelForCausalLM

        ref = AutoModelForCausalLM.from_pretrained(str(ref_model_path), **(args.model_init_kwargs or {}))
    return DPOTrainer(
        model=str(model_path), ref_model=ref, args=args, train_dataset=data,
        processing_class=tok, peft_config=lora_config(lora),
    )


def sft_trainer(
    model_path: str | Path,
    rows: Iterable[dict],
    output_dir: str | Path,
    config: dict[str, Any] | None = None,
    tokenizer_path: str | Path | None = None,
    lora: dict | None = None,
):
    """A ready `trl.SFTTrainer` on {prompt, completion} rows; config overrides `trl.SFTConfig`.

    Loss is on the completion only (TRL's default for prompt-completion rows; `completion_only_loss`
    overrides it); `packing=True` packs rows best-fit into `max_length` sequences.
    """
    from trl import SFTConfig, SFTTrainer

    args = build_config(SFTConfig, dict(config or {}), output_dir)
    zero3_checkpointing(args)
    tok = _tokenizer(tokenizer_path or model_path)
    data = _dataset(rows, SFT_FIELDS, tok.eos_token, completions=("completion",))
    return SFTTrainer(
        model=str(model_path), args=args, train_dataset=data, processing_class=tok, peft_config=lora_config(lora),
    )


def train_dpo(model_path: str | Path, rows: Iterable[dict], output_dir: str | Path, *args, **kwargs) -> dict[str, Any]:
    """DPO with `dpo_trainer`'s arguments; saves model + tokenizer to output_dir (resuming from its newest
    checkpoint); returns metrics."""
    rows = list(rows)
    return _fit(dpo_trainer(model_path, rows, output_dir, *args, **kwargs), rows, output_dir, ("chosen", "rejected"))


def _fit(trainer, rows: list[dict], output_dir, completions: tuple[str, ...]) -> dict[str, Any]:
    """checkpoints.fit (merging a LoRA adapter into the saved model), plus what max_length truncates (rank 0)."""
    metrics = fit(trainer, output_dir, trainer.processing_class, merge_lora=hasattr(trainer.model, "peft_config"))
    if trainer.is_world_process_zero():
        stats = length_stats(trainer.processing_class, rows, completions, trainer.args.max_length)
        metrics.update({f"truncation_{k}": v for k, v in stats.items()})
    return metrics


def train_sft(model_path: str | Path, rows: Iterable[dict], output_dir: str | Path, *args, **kwargs) -> dict[str, Any]:
    """SFT with `sft_trainer`'s arguments; saves model + tokenizer to output_dir (resuming from its newest
    checkpoint); returns metrics."""
    rows = list(rows)
    return _fit(sft_trainer(model_path, rows, output_dir, *args, **kwargs), rows, output_dir, ("completion",))
