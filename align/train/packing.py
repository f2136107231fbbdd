"""Per-response log-probs for ranking losses, sharing the prompt across its k responses.

Layouts (all give `logp_sum [B, K]` and `lengths [B, K]` for `align/train/losses.py`, and the same
values and gradients up to float rounding: tests/align/test_packing.py):

  "prefix"  KV-cache sharing: the prompt (all but its last token) runs once per prompt with the cache
            on; the cache is expanded to the k responses (an index_select, so gradients flow back
            through it into the prompt's computation) and the responses run as one batch of rows
            [last prompt token, response[:-1]] with position ids continuing after the prompt.
            Prompt compute is shared and attention is only (response x (prompt + response)).
            Needs a model that takes `past_key_values` (a transformers Cache with
            `batch_select_indices`) and a 2D mask over cache + new tokens: GPTBigCode, Llama and most
            decoders. Not used under gradient checkpointing (transformers then drops the cache).
            With dropout on, the prompt's dropout draw is shared by its k responses (one draw, not k).
  "packed"  one row per prompt [prompt, resp_1, ..., resp_k], no padding between them, with a 4D
            additive block mask (each response sees the prompt and itself) and position ids that
            restart after the prompt for every response. Shares the prompt too, but attention runs
            over the whole (prompt + k responses)^2 square. Needs masks built by transformers'
            `create_causal_mask` (which passes a 4D mask through as-is) and eager/sdpa attention.
  "naive"   k right-padded rows per prompt, the prompt repeated (the public RRHF code's layout):
            the reference, and the fallback for models where neither of the above works.
  "auto"    the first of prefix, packed, naive that `layout_supported` accepts for this model
            (a tiny probe forward per layout, compared with naive, once per model).

Only the positions that predict response tokens are projected onto the vocabulary (a boolean
`logits_to_keep`, transformers >= 5), in every layout.

Collated batch keys (see `rank_trainer.rank_collator`): prompt_ids [B, P] and prompt_lens [B];
response_ids [B, K, R] and response_lens [B, K] (0 = no response in that slot); scores, teacher [B, K].

Test: `pytest tests/align/test_packing.py`; speed: `python bench/train.py`.
"""
from __future__ import annotations

import inspect

import torch


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


def _accepts_logits_to_keep(model) -> bool:
    fwd = getattr(model, "forward", None)
    try:
        params = inspect.signature(fwd).parameters
    except (TypeError, ValueError):
        return False
    return "logits_to_keep" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def _logits(model, keep: torch.Tensor, **model_kwargs) -> torch.Tensor:
    """Logits at the `keep` [N, T] positions, flattened row-major to [n_keep, V]."""
    if _accepts_logits_to_keep(model):
        try:
            logits = model(**model_kwargs, logits_to_keep=keep).logits
        except TypeError:                 # the model takes no `logits_to_keep`
            logits = model(**model_kwargs).logits
    else:
        logits = model(**model_kwargs).logits
    if logits.dim() == 2 and logits.shape[0] == int(keep.sum()):
        return logits
    if logits.dim() == 3 and logits.shape[:2] == keep.shape:   # all positions were projected
        return logits[keep]
    raise RuntimeError(f"unexpected logits shape {tuple(logits.shape)} for inputs {tuple(keep.shape)}")


def _gather_logps(logits: torch.Tensor, keep: torch.Tensor, row, pred_pos, token) -> torch.Tensor:
    """log P(token) per target; `logits` [n_keep, V] are the kept positions in row-major order."""
    place = keep.flatten().cumsum(0).sub(1).view_as(keep)[row, pred_pos]
    picked = logits[place].float()
    return picked.gather(-1, token[:, None]).squeeze(-1) - torch.logsumexp(picked, dim=-1)


def _single_pass(model, inputs: dict) -> torch.Tensor:
    row, pred_pos, token = inputs["row"], inputs["pred_pos"], inputs["token"]
    keep = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
    keep[row, pred_pos] = True
    model_kwargs = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if k in inputs}
    return _gather_logps(_logits(model, keep, use_cache=False, **model_kwargs), keep, row, pred_pos, token)


def naive_logps(model, batch: dict, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = naive_inputs(batch, pad_id)
    return _single_pass(model, inputs), inputs["slot"]


def packed_logps(model, batch: dict, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = packed_inputs(batch, pad_id, _mask_dtype(model))
    return _single_pass(model, inputs), inputs["slot"]


def prefix_logps(model, batch: dict, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """KV-cache sharing: prompt[:-1] once, then rows [prompt[-1], response[:-1]] on the expanded cache."""
    prompt_ids, resp_ids = batch["prompt_ids"], batch["response_ids"]
    dev, K = prompt_ids.device, resp_ids.shape[1]
    plens = batch["prompt_lens"]
    if int(plens.min()) < 2:             # an empty context row would be fully masked: use the reference
        return naive_logps(model, batch, pad_id)
    targets = _targets(batch)
    ctx_len = plens - 1
    C = int(ctx_len.max())
    ctx_mask = torch.arange(C, device=dev)[None, :] < ctx_len[:, None]
    ctx_ids = prompt_ids[:, :C].masked_fill(~ctx_mask, pad_id)
    cache = model(input_ids=ctx_ids, attention_mask=ctx_mask.long(), use_cache=True, logits_to_keep=1).past_key_values
    owner = torch.tensor([b for b, _, _, _ in targets], device=dev)
    cache.batch_select_indices(owner)    # differentiable indexing: each response gets its prompt's keys/values
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
    logits = _logits(model, keep, input_ids=ids, attention_mask=torch.cat([ctx_mask[owner].long(), mask], 1),
                     position_ids=positions, past_key_values=cache, use_cache=True)
    row, pred_pos = keep.nonzero(as_tuple=True)          # row-major, the order targets were laid out in
    return _gather_logps(logits, keep, row, pred_pos, torch.cat(toks)), torch.cat(slots)


LAYOUTS = {"prefix": prefix_logps, "packed": packed_logps, "naive": naive_logps}


def response_logps(model, batch: dict, layout: str = "prefix", pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp_sum [B, K], lengths [B, K]) for the collated `batch` under `layout` (a key of LAYOUTS)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {sorted(LAYOUTS)} (resolve 'auto' with choose_layout)")
    B, K = batch["response_lens"].shape
    lp, slot = LAYOUTS[layout](model, batch, pad_id)
    logp_sum = torch.zeros(B * K, dtype=lp.dtype, device=lp.device).index_add(0, slot, lp)
    return logp_sum.view(B, K), batch["response_lens"]


def _mask_dtype(model) -> torch.dtype:
    # sdpa wants a float mask in the query dtype; the embedding dtype is what the model computes in.
    try:
        dtype = model.get_input_embeddings().weight.dtype
    except (AttributeError, NotImplementedError):
        dtype = next(model.parameters()).dtype
    return dtype if dtype.is_floating_point else torch.float32


def _probe_batch(vocab: int, device) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, 3, 5), generator=g)
    return {"prompt_ids": ids[:, 0, :4].to(device), "prompt_lens": torch.tensor([4], device=device),
            "response_ids": ids[:, 1:, :].to(device), "response_lens": torch.tensor([[5, 3]], device=device)}


def checkpointing(model) -> bool:
    """Whether activation (gradient) checkpointing is on; transformers renamed the flag in 5.x."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name) or hasattr(getattr(model, "base_model", None), name):
            return bool(getattr(model, name, False))
    return False


def layout_supported(model, layout: str, atol: float | None = None) -> bool:
    """True if `layout` gives the naive layout's log-probs on a tiny probe batch.

    Catches models that reject the layout's inputs (an exception) and models that silently ignore them
    (a mismatch, e.g. a 4D mask dropped: responses would see each other). One forward per layout,
    without gradients, in eval mode; the modules' train/eval flags are restored exactly.
    """
    if layout == "prefix" and checkpointing(model):
        return False                     # checkpointed layers drop `past_key_values` in training
    try:
        vocab = model.get_input_embeddings().num_embeddings
        device = next(model.parameters()).device
    except (AttributeError, StopIteration, NotImplementedError):
        return False
    batch = _probe_batch(min(vocab, 1000), device)
    if atol is None:
        atol = 1e-4 if _mask_dtype(model) == torch.float32 else 2e-2
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            tried, _ = response_logps(model, batch, layout)
            naive, _ = response_logps(model, batch, "naive")
        return bool(torch.allclose(tried, naive, atol=atol, rtol=0))
    except Exception:  # any failure of an efficient path means: try the next one
        return False
    finally:
        for m, mode in modes:
            m.training = mode


def packing_supported(model) -> bool:
    return layout_supported(model, "packed")


def choose_layout(model, requested: str = "auto") -> str:
    """Resolve "auto" to the first supported of prefix, packed, naive; other names are taken as given."""
    if requested != "auto" and requested not in LAYOUTS:
        raise ValueError(f"packing={requested!r}: expected 'auto' or one of {sorted(LAYOUTS)}")
    if requested != "auto":
        return requested
    return next((name for name in ("prefix", "packed") if layout_supported(model, name)), "naive")
