"""Per-token log-probs of chosen tokens without a [tokens, vocab] fp32 log-softmax kept for backward.

`target_logps(model, keep, rows, cols, tokens, head=..., **model_kwargs)` runs the model once and returns
log P(token) [n] (fp32) for the targets whose predicting position is (rows[i], cols[i]) of the inputs.

Heads (decided once per model with the layout, align/train/layout_choice.py):
  "chunks"  a forward pre-hook on the output embedding (lm_head) takes its input hidden states
            [n_keep, H] and lets it project only the first of them, so the model's forward never builds
            the vocabulary-wide tensor; then lm_head + fp32 log-softmax run per chunk of `chunk_tokens` targets
            under activation checkpointing (non-reentrant), so backward keeps only the hidden states and
            recomputes one chunk's [chunk, V] logits at a time. The module call keeps LoRA layers and
            other wrappers in the path. Right for models whose logits are lm_head(hidden) as such;
            models that post-process logits (soft-capping, scaling) fail the layout probe's check, and
            models under ZeRO-3 are refused up front (the backward replay of lm_head runs outside the
            model's forward, where ZeRO-3 has partitioned its weight: a 2-process CPU run fails so); they get:
  "logits"  the model's own logits at the kept positions ([n_keep, V] in the model dtype), then the fp32
            log-softmax per chunk under checkpointing (keeps the model-dtype logits, not an fp32 copy:
            half the memory in bf16).

Peak memory: tests/align/test_packing.py::test_chunked_head_never_builds_the_vocab_wide_tensor.
"""
from __future__ import annotations

import inspect

import torch
from torch.utils.checkpoint import checkpoint

HEADS = ("chunks", "logits")
CHUNK_BYTES = 64 * 2**20         # fp32 logits per chunk (330 tokens at a 49k vocabulary); backward peaks at ~4x


def chunk_tokens(vocab: int) -> int:
    return max(1, CHUNK_BYTES // (4 * vocab))


def _accepts_logits_to_keep(model) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (AttributeError, TypeError, ValueError):
        return False
    return "logits_to_keep" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def _kept(out: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """[n_keep, D] rows of a model output that is either already kept ([n_keep, D]) or full ([N, T, D])."""
    if out.dim() == 2 and out.shape[0] == int(keep.sum()):
        return out
    if out.dim() == 3 and out.shape[:2] == keep.shape:   # the model projected every position
        return out[keep]
    raise RuntimeError(f"unexpected output shape {tuple(out.shape)} for inputs {tuple(keep.shape)}")


def _run(model, keep: torch.Tensor, model_kwargs: dict):
    if _accepts_logits_to_keep(model):
        try:
            return model(**model_kwargs, logits_to_keep=keep).logits
        except TypeError:                 # a **kwargs forward that does not take it after all
            pass
    return model(**model_kwargs).logits


def _logps_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    return logits.gather(-1, tokens[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _logps_from_hidden(head, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return _logps_from_logits(head(hidden), tokens)


def _chunked(fn, first, tokens: torch.Tensor, size: int, *lead) -> torch.Tensor:
    """fn(*lead, first[chunk], tokens[chunk]) per chunk; checkpointed when gradients are on."""
    parts = []
    for i in range(0, tokens.shape[0], size):
        args = (*lead, first[i:i + size], tokens[i:i + size])
        if torch.is_grad_enabled() and first.requires_grad:
            parts.append(checkpoint(fn, *args, use_reentrant=False))
        else:
            parts.append(fn(*args))
    return torch.cat(parts) if parts else first.new_zeros(0, dtype=torch.float32)


class _HiddenTap:
    """Forward pre-hook on lm_head: records its input hidden states and lets it project only one position
    ([..., :1, :] of them), so the model's forward builds no vocabulary-wide tensor."""

    def __init__(self):
        self.hidden: torch.Tensor | None = None

    def __call__(self, module, args):
        self.hidden = args[0]
        return (args[0][..., :1, :], *args[1:])


def target_logps(model, keep: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, tokens: torch.Tensor,
                 head: str = "chunks", **model_kwargs) -> torch.Tensor:
    """log P(tokens[i]) [n] in fp32, predicted at position (rows[i], cols[i]); `keep` [N, T] marks
    every predicting position (the model computes nothing vocabulary-wide elsewhere)."""
    if head not in HEADS:
        raise ValueError(f"head={head!r}: expected one of {HEADS}")
    place = keep.flatten().cumsum(0).sub(1).view_as(keep)[rows, cols]     # index among the kept rows
    # getattr(.module): under DDP (several processes without DeepSpeed) the Trainer passes the wrapper.
    lm_head = getattr(model, "module", model).get_output_embeddings() if head == "chunks" else None
    if lm_head is None:
        logits = _kept(_run(model, keep, model_kwargs), keep)
        return _chunked(_logps_from_logits, logits[place], tokens, chunk_tokens(logits.shape[-1]))
    tap = _HiddenTap()
    handle = lm_head.register_forward_pre_hook(tap, prepend=True)
    try:
        _run(model, keep, model_kwargs)
    finally:
        handle.remove()
    if tap.hidden is None:
        raise RuntimeError(f"{type(model).__name__}: the output embedding was not called in forward")
    hidden = _kept(tap.hidden, keep)[place]
    vocab = getattr(lm_head, "out_features", None) or lm_head.weight.shape[0]
    return _chunked(_logps_from_hidden, hidden, tokens, chunk_tokens(vocab), lm_head)
