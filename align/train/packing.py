"""Per-response log-probs for ranking losses, sharing the prompt across its k responses.

Layouts (all give `logp_sum [B, K]` and `lengths [B, K]` for `align/train/losses.py`, and the same
values and gradients up to float rounding: tests/align/test_packing.py):

  "prefix"  KV-cache sharing: the prompt (all but its last token) runs once per prompt, filling a
            `SharedPromptCache`; the responses then run as one batch of rows [last prompt token,
            response[:-1]] with position ids continuing after the prompt, each layer reading its
            prompt's keys/values through an index_select (so gradients flow back into the prompt's
            computation). Prompt compute is shared and attention is only (response x (prompt +
            response)). Works under activation checkpointing: the cache stores the prompt pass's first
            keys/values and never writes in the response pass, so the layers' backward replays read
            the same states (transformers' `_can_checkpoint_with_cache`, set for the two calls);
            needs non-reentrant checkpointing (reentrant gives no gradient to tensors reached through
            the cache). Needs a model that takes `past_key_values` and a 2D mask over cache + new
            tokens: GPTBigCode, Llama and most decoders. With dropout on, the prompt's dropout draw is
            shared by its k responses (one draw, not k): README "Shared prompts" says why that does
            not matter, measured with `bench/train.py --dropout-study`.
  "packed"  one row per prompt [prompt, resp_1, ..., resp_k], no padding between them, with a 4D
            additive block mask (each response sees the prompt and itself) and position ids that
            restart after the prompt for every response. Shares the prompt too, but attention runs
            over the whole (prompt + k responses)^2 square. Needs masks built by transformers'
            `create_causal_mask` (which passes a 4D mask through as-is) and eager/sdpa attention.
  "naive"   k right-padded rows per prompt, the prompt repeated (the public RRHF code's layout):
            the reference, and the fallback for models where neither of the above works.
"auto" is resolved once per model by align/train/layout_choice.py (static rules, then a probe).

Only the positions that predict response tokens reach the vocabulary projection, in chunks
(align/train/token_logps.py), in every layout.

Collated batch keys (see `rank_trainer.rank_collator`): prompt_ids [B, P] and prompt_lens [B];
response_ids [B, K, R] and response_lens [B, K] (0 = no response in that slot); scores, teacher [B, K].

Test: `pytest tests/align/test_packing.py`; speed: `python bench/train.py`.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from align.train.token_logps import target_logps


def _targets(batch: dict) -> list[tuple[int, int, int, int]]:
    """(b, k, prompt_len, response_len) for every non-empty response slot."""
    plens = batch["prompt_lens"].tolist()
    rlens = batch["response_lens"].tolist()
    return [(b, k, plens[b], n) for b in range(len(rlens)) for k, n in enumerate(rlens[b]) if n > 0]


def naive_inputs(batch: dict, pad_id: int = 0) -> dict:
    """One right-padded row [prompt, response] per non-empty slot.

    Returns input_ids, attention_mask [N, T]; and per target token: row, pred_pos (the position whose
    logits predict it), token, slot (b * K + k).
    """
    prompt_ids, resp_ids = batch["prompt_ids"], batch["response_ids"]
    K = resp_ids.shape[1]
    targets = _targets(batch)
    T = max(p + n for _, _, p, n in targets)
    input_ids = torch.full((len(targets), T), pad_id, dtype=torch.long, device=prompt_ids.device)
    attn = torch.zeros_like(input_ids)
    rows, pos, toks, slots = [], [], [], []
    for i, (b, k, p, n) in enumerate(targets):
        input_ids[i, :p] = prompt_ids[b, :p]
        input_ids[i, p:p + n] = resp_ids[b, k, :n]
        attn[i, :p + n] = 1
        rows.append(torch.full((n,), i))
        pos.append(torch.arange(p - 1, p + n - 1))
        toks.append(resp_ids[b, k, :n].cpu())
        slots.append(torch.full((n,), b * K + k))
    dev = prompt_ids.device
    return {"input_ids": input_ids, "attention_mask": attn,
            "row": torch.cat(rows).to(dev), "pred_pos": torch.cat(pos).to(dev),
            "token": torch.cat(toks).to(dev), "slot": torch.cat(slots).to(dev)}


def packed_inputs(batch: dict, pad_id: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    """One row per prompt [prompt, resp_1, ..., resp_k] with a 4D block mask and restarting positions.

    Returns input_ids, position_ids [B, T], attention_mask [B, 1, T, T] (0 = attend, min = blocked),
    and the same per-target-token index tensors as `naive_inputs` (row = b).
    """
    prompt_ids, resp_ids = batch["prompt_ids"], batch["response_ids"]
    B, K = resp_ids.shape[:2]
    plens = batch["prompt_lens"].tolist()
    rlens = batch["response_lens"].tolist()
    T = max(plens[b] + sum(rlens[b]) for b in range(B))
    dev = prompt_ids.device
    input_ids = torch.full((B, T), pad_id, dtype=torch.long, device=dev)
    position_ids = torch.zeros((B, T), dtype=torch.long, device=dev)
    segment = torch.full((B, T), -1, dtype=torch.long, device=dev)   # -1 pad, 0 prompt, k+1 response k
    rows, pos, toks, slots = [], [], [], []
    for b in range(B):
        p = plens[b]
        input_ids[b, :p] = prompt_ids[b, :p]
        position_ids[b, :p] = torch.arange(p)
        segment[b, :p] = 0
        start = p
        for k, n in enumerate(rlens[b]):
            if n == 0:
                continue
            end = start + n
            input_ids[b, start:end] = resp_ids[b, k, :n]
            position_ids[b, start:end] = torch.arange(p, p + n)
            segment[b, start:end] = k + 1
            # The first token is predicted from the last prompt token, the rest from their predecessor.
            rows.append(torch.full((n,), b))
            pos.append(torch.cat([torch.tensor([p - 1]), torch.arange(start, end - 1)]))
            toks.append(resp_ids[b, k, :n].cpu())
            slots.append(torch.full((n,), b * K + k))
            start = end
    idx = torch.arange(T, device=dev)
    causal = idx[None, :, None] >= idx[None, None, :]                       # [1, q, kv]
    seg_q, seg_kv = segment[:, :, None], segment[:, None, :]
    allowed = causal & (seg_kv >= 0) & ((seg_kv == 0) | (seg_kv == seg_q))
    allowed = allowed | torch.eye(T, dtype=torch.bool, device=dev)          # pad rows: never all-blocked
    mask = torch.zeros((B, 1, T, T), dtype=dtype, device=dev)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": mask,
            "row": torch.cat(rows).to(dev), "pred_pos": torch.cat(pos).to(dev),
            "token": torch.cat(toks).to(dev), "slot": torch.cat(slots).to(dev)}


def _single_pass(model, inputs: dict, head: str) -> torch.Tensor:
    row, pred_pos, token = inputs["row"], inputs["pred_pos"], inputs["token"]
    keep = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
    keep[row, pred_pos] = True
    model_kwargs = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if k in inputs}
    return target_logps(model, keep, row, pred_pos, token, head, use_cache=False, **model_kwargs)


def naive_logps(model, batch: dict, pad_id: int = 0, head: str = "chunks") -> tuple[torch.Tensor, torch.Tensor]:
    inputs = naive_inputs(batch, pad_id)
    return _single_pass(model, inputs, head), inputs["slot"]


def packed_logps(model, batch: dict, pad_id: int = 0, head: str = "chunks") -> tuple[torch.Tensor, torch.Tensor]:
    inputs = packed_inputs(batch, pad_id, compute_dtype(model))
    return _single_pass(model, inputs, head), inputs["slot"]


class _SharedPromptLayer(DynamicLayer):
    """One layer of `SharedPromptCache`.

    Prompt pass (`owner` None): keeps the first keys/values [B, h, C, d] it is given and returns them
    unchanged; a checkpointed layer replays `update` in backward, and keeping the first makes that replay a
    no-op. Response pass (`owner` [N] set): returns [prompt keys of row i's prompt, new keys] along the
    sequence, without storing; the index_select runs inside the (checkpointed) layer, so backward keeps
    the prompt's B rows, not N expanded copies.
    """

    owner: torch.Tensor | None = None

    def update(self, key_states, value_states, *args, **kwargs):
        if self.owner is None:
            if not self.is_initialized:
                self.dtype, self.device = key_states.dtype, key_states.device
                self.keys, self.values, self.is_initialized = key_states, value_states, True
            return key_states, value_states
        return (torch.cat([self.keys.index_select(0, self.owner), key_states], dim=-2),
                torch.cat([self.values.index_select(0, self.owner), value_states], dim=-2))


class SharedPromptCache(DynamicCache):
    """A read-only-after-the-prompt KV cache: safe to replay under activation checkpointing (see the layer)."""

    def __init__(self):
        Cache.__init__(self, layer_class_to_replicate=_SharedPromptLayer)

    def share(self, owner: torch.Tensor) -> "SharedPromptCache":
        """A new cache for the response pass, row i reading prompt owner[i]. A new object, because the
        prompt pass's checkpointed layers replay `update` on this one in backward (and must still record)."""
        shared = SharedPromptCache()
        for layer in self.layers:
            read = _SharedPromptLayer()
            read.dtype, read.device, read.is_initialized = layer.dtype, layer.device, True
            read.keys, read.values, read.owner = layer.keys, layer.values, owner
            shared.layers.append(read)
        return shared


@contextmanager
def cache_through_checkpoints(model):
    """Let checkpointed transformers layers keep `past_key_values` (they drop it by default because a
    writing cache would be updated twice; SharedPromptCache is replay-safe). Flags are restored after."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    saved = [m.__dict__.get("_can_checkpoint_with_cache") for m in layers]
    for m in layers:
        m._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for m, value in zip(layers, saved):
            if value is None:
                del m._can_checkpoint_with_cache
            else:
                m._can_checkpoint_with_cache = value


def reentrant_checkpointing(model) -> bool:
    """True if any checkpointed layer uses torch's reentrant checkpoint (the default when not said)."""
    for m in model.modules():
        func = getattr(m, "_gradient_checkpointing_func", None)
        if getattr(m, "gradient_checkpointing", False) and func is not None:
            if getattr(func, "keywords", {}).get("use_reentrant", True):
                return True
    return False


def prefix_logps(model, batch: dict, pad_id: int = 0, head: str = "chunks") -> tuple[torch.Tensor, torch.Tensor]:
    """KV-cache sharing: prompt[:-1] once, then rows [prompt[-1], response[:-1]] on the shared cache."""
    if model.training and torch.is_grad_enabled() and checkpointing(model) and reentrant_checkpointing(model):
        raise ValueError("layout 'prefix' needs non-reentrant activation checkpointing (use_reentrant=False): "
                         "reentrant checkpointing gives no gradient through the prompt's cache")
    prompt_ids, resp_ids = batch["prompt_ids"], batch["response_ids"]
    dev, K = prompt_ids.device, resp_ids.shape[1]
    plens = batch["prompt_lens"]
    if int(plens.min()) < 2:             # an empty context row would be fully masked: use the reference
        return naive_logps(model, batch, pad_id, head)
    targets = _targets(batch)
    ctx_len = plens - 1
    C = int(ctx_len.max())
    ctx_mask = torch.arange(C, device=dev)[None, :] < ctx_len[:, None]
    ctx_ids = prompt_ids[:, :C].masked_fill(~ctx_mask, pad_id)
    cache = SharedPromptCache()
    owner = torch.tensor([b for b, _, _, _ in targets], device=dev)
    T = max(n for *_, n in targets)
    ids = torch.full((len(targets), T), pad_id, dtype=torch.long, device=dev)
    mask = torch.zeros_like(ids)
    toks, slots = [], []
    for i, (b, k, p, n) in enumerate(targets):
        ids[i, 0] = prompt_ids[b, p - 1]
        ids[i, 1:n] = resp_ids[b, k, :n - 1]
        mask[i, :n] = 1
        toks.append(resp_ids[b, k, :n])
        slots.append(torch.full((n,), b * K + k, device=dev))
    positions = ctx_len[owner][:, None] + torch.arange(T, device=dev)[None, :]
    keep = mask.bool()
    row, pred_pos = keep.nonzero(as_tuple=True)          # row-major, the order targets were laid out in
    with cache_through_checkpoints(model):
        # The prompt pass's only output is the cache; its one kept logit row is the cheapest the API allows.
        model(input_ids=ctx_ids, attention_mask=ctx_mask.long(), past_key_values=cache, use_cache=True,
              logits_to_keep=1)
        lp = target_logps(model, keep, row, pred_pos, torch.cat(toks), head, input_ids=ids,
                          attention_mask=torch.cat([ctx_mask[owner].long(), mask], 1), position_ids=positions,
                          past_key_values=cache.share(owner), use_cache=True)
    return lp, torch.cat(slots)


LAYOUTS = {"prefix": prefix_logps, "packed": packed_logps, "naive": naive_logps}


def response_logps(model, batch: dict, layout: str = "prefix", pad_id: int = 0,
                   head: str = "chunks") -> tuple[torch.Tensor, torch.Tensor]:
    """(logp_sum [B, K] fp32, lengths [B, K]) for the collated `batch` under `layout` (a key of LAYOUTS)
    and `head` (align/train/token_logps.py)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {sorted(LAYOUTS)} (resolve 'auto' with "
                         "align.train.layout_choice.decide)")
    B, K = batch["response_lens"].shape
    lp, slot = LAYOUTS[layout](model, batch, pad_id, head)
    logp_sum = torch.zeros(B * K, dtype=lp.dtype, device=lp.device).index_add(0, slot, lp)
    return logp_sum.view(B, K), batch["response_lens"]


def compute_dtype(model) -> torch.dtype:
    # sdpa wants a float mask in the query dtype; the embedding dtype is what the model computes in.
    try:
        dtype = model.get_input_embeddings().weight.dtype
    except (AttributeError, NotImplementedError):
        dtype = next(model.parameters()).dtype
    return dtype if dtype.is_floating_point else torch.float32


def checkpointing(model) -> bool:
    """Whether activation (gradient) checkpointing is on; transformers renamed the flag in 5.x."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name) or hasattr(getattr(model, "base_model", None), name):
            return bool(getattr(model, name, False))
    return False
