"""Decide once per model which layout (align/train/packing.py) and logits head (token_logps.py) to train with.

    decision = decide(model, "auto")      # -> Decision(layout="prefix", head="chunks", reasons={...})

Order: static rules first, so nothing known to fail ever runs (flash_attention_2 takes no 4D mask:
"packed" is refused up front, not caught mid-forward, where under ZeRO-3 a half-finished forward leaves
parameters gathered); then a probe: the tiny batch `_probe_batch` through the candidate layout and head,
compared per token, in fp32, with the naive layout on the model's own logits. The tolerance is per
token and follows the compute dtype (`TOLERANCE`), so a bf16 model passes with bf16 rounding while a
layout that lets a response see another one or drops the prompt's cache fails. If checkpointing is on,
the probe runs the checkpointed path (layers in training mode, every other module in eval mode: no
dropout), which is where a model may drop the cache.

A forced layout (`train.layout` other than "auto") is checked the same way and refused with the reason.
The trainer calls `decide` on every rank (the probe's forwards are collective under ZeRO-3, so all
ranks must run them) and uses rank 0's answer on all of them (align/train/rank_trainer.py).
Tests: tests/align/test_packing.py.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field

import torch

from align.train.packing import LAYOUTS, checkpointing, compute_dtype, reentrant_checkpointing

log = logging.getLogger(__name__)

CHOICES = ("auto", *LAYOUTS)
ORDER = ("prefix", "packed", "naive")              # fastest first (bench/train.py)
MASK_4D = frozenset({"eager", "sdpa"})            # attention that applies an additive 4D mask as given
# Per-token |lp - lp_naive| <= atol + rtol * |lp_naive|, by the dtype the model computes in. bf16 keeps 8
# mantissa bits: its rounding moves a log-prob by a few 1e-2 at most on the probe; a response that
# sees another one, or a lost prompt cache, moves trained models' log-probs by whole nats.
TOLERANCE = {torch.float32: (1e-4, 1e-5), torch.float64: (1e-8, 1e-8),
             torch.bfloat16: (0.1, 0.02), torch.float16: (0.05, 0.01)}


@dataclass
class Decision:
    layout: str
    head: str = "chunks"
    reasons: dict[str, str] = field(default_factory=dict)   # why each faster layout was not taken

    def describe(self) -> str:
        why = "; ".join(f"{name}: {reason}" for name, reason in self.reasons.items())
        return f"layout={self.layout} head={self.head}" + (f" (not {why})" if why else "")


def attn_implementation(model) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "_attn_implementation", None) or "eager")


def _takes(model, name: str) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (AttributeError, TypeError, ValueError):
        return False
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def static_reason(model, layout: str) -> str | None:
    """Why `layout` cannot work on this model, known without running it; None if it may."""
    if layout == "packed" and attn_implementation(model) not in MASK_4D:
        return (f"attn_implementation={attn_implementation(model)!r} takes no 4D block mask "
                f"(packed needs one of {sorted(MASK_4D)})")
    if layout == "prefix":
        if not _takes(model, "past_key_values"):
            return "forward takes no past_key_values"
        if checkpointing(model) and reentrant_checkpointing(model):
            return ("reentrant activation checkpointing gives no gradient through the prompt's cache "
                    "(use_reentrant=False allows prefix)")
    return None


def _head_reason(model) -> str | None:
    """Why the chunked head cannot run, known without running it."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and any(hasattr(p, "ds_id") for p in head.parameters()):
        # Its backward replays lm_head outside the model's forward, where ZeRO-3 leaves the weight partitioned.
        return "ZeRO-3 partitions lm_head's weight, which the chunked head's recompute would see empty"
    return None


def _probe_batch(vocab: int, device) -> dict:
    """B = 2 prompts (6 and 4 tokens), k = 2 ragged responses, one slot empty."""
    g = torch.Generator().manual_seed(0)
    return {"prompt_ids": torch.randint(1, vocab, (2, 6), generator=g).to(device),
            "prompt_lens": torch.tensor([6, 4], device=device),
            "response_ids": torch.randint(1, vocab, (2, 2, 5), generator=g).to(device),
            "response_lens": torch.tensor([[5, 3], [4, 0]], device=device)}


class _ProbeModes:
    """Eval mode everywhere, except the modules that carry the checkpointing switch when it is on (they
    stay in training mode so the checkpointed path runs); restores every module's flag exactly."""

    def __init__(self, model):
        self.model, self.saved = model, [(m, m.training) for m in model.modules()]

    def __enter__(self):
        ckpt = checkpointing(self.model)
        for m, _ in self.saved:
            m.training = ckpt and bool(getattr(m, "gradient_checkpointing", False))
        return self

    def __exit__(self, *exc):
        for m, mode in self.saved:
            m.training = mode


def _token_logps(model, batch, layout: str, head: str) -> torch.Tensor:
    lp, slot = LAYOUTS[layout](model, batch, 0, head)
    return lp[slot.argsort(stable=True)].float()     # slot order: the same token order in every layout


def probe(model, layout: str, head: str) -> str | None:
    """Why `layout` + `head` disagree with naive + the model's logits on the probe batch; None if they agree."""
    try:
        vocab = model.get_input_embeddings().num_embeddings
        device = next(model.parameters()).device
    except (AttributeError, StopIteration, NotImplementedError) as e:
        return f"cannot build a probe batch ({e})"
    batch = _probe_batch(min(vocab, 1000), device)
    atol, rtol = TOLERANCE.get(compute_dtype(model), TOLERANCE[torch.bfloat16])
    with _ProbeModes(model), torch.no_grad():
        try:
            tried = _token_logps(model, batch, layout, head)
            ref = _token_logps(model, batch, "naive", "logits")
        except Exception as e:  # a model that rejects the layout's inputs: report it as the reason
            return f"probe forward failed: {type(e).__name__}: {e}"
    err = (tried - ref).abs() - (atol + rtol * ref.abs())
    if tried.shape != ref.shape or bool((err > 0).any()):
        worst = float((tried - ref).abs().max()) if tried.shape == ref.shape else float("nan")
        return f"probe log-probs differ from naive (max per-token error {worst:.3g}, tolerance {atol}+{rtol}|lp|)"
    return None


def decide(model, requested: str = "auto") -> Decision:
    """The layout and head for `model` (unwrapped): `requested` = "auto" or a key of LAYOUTS (forced:
    checked, and refused with the reason if it cannot work)."""
    if requested not in CHOICES:
        raise ValueError(f"layout={requested!r}: expected one of {list(CHOICES)}")
    head_reason = _head_reason(model) or probe(model, "naive", "chunks")
    head = "chunks" if head_reason is None else "logits"
    reasons = {} if head_reason is None else {"head=chunks": head_reason}
    for layout in (ORDER if requested == "auto" else (requested,)):
        reason = static_reason(model, layout) or (probe(model, layout, head) if layout != "naive" else None)
        if reason is None:
            return Decision(layout, head, reasons)
        if requested != "auto":
            raise ValueError(f"train.layout={requested!r} cannot train {type(model).__name__}: {reason}")
        reasons[layout] = reason
    raise AssertionError("naive is always accepted")
