"""How much the RRTF rank term can do: its size against the fine-tuning term, and how many pairs are active.

    python bench/rank_term.py --rows runs/tiny/compare/compare/rrtf/rrtf-rows.jsonl \\
        --model STUDENT_DIR --model runs/tiny/compare/compare/rrtf/seed-0 --model runs/tiny/compare/compare/sft/seed-0

For each model (no training): over the RRTF pairs of the rows (teacher i over student j, r_i >= r_j),
the fraction whose hinge max(0, p_j - p_i) is non-zero (only those pairs give the rank term a gradient),
the rank loss and the fine-tuning loss with the default RankLossConfig (or `--rank-reduction`) and
their ratio; and, since a
small loss value can still carry a large gradient, the gradient norm of each term over the whole set
and the cosine between the two gradients (near 1: the rank term pushes where the cross-entropy already
does).
"""
from __future__ import annotations

import argparse
import json

import torch


def measure(model_path: str, rows: list[dict], batch_size: int = 8, max_length: int = 256,
            rank_reduction: str = "pair") -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.train.losses import RankLossConfig, rrtf_loss, sequence_scores
    from align.train.packing import response_logps
    from align.train.rank_trainer import rank_collator

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    collate = rank_collator(tok, max_length)
    cfg = RankLossConfig(rank_reduction=rank_reduction)
    active = pairs = 0
    rank = ft = 0.0
    params = [q for q in model.parameters() if q.requires_grad]
    grads = {k: [torch.zeros_like(q) for q in params] for k in ("rank_loss", "ft_loss")}
    for i in range(0, len(rows), batch_size):
        batch = collate(rows[i:i + batch_size])
        logp, lens = response_logps(model, batch, "naive", collate.pad_id)
        out = rrtf_loss(logp, lens, batch["scores"], batch["teacher"], cfg)
        for k in grads:                       # each term's gradient, weighted like its batch mean
            for acc, g in zip(grads[k], torch.autograd.grad(out[k], params, retain_graph=True, allow_unused=True)):
                if g is not None:
                    acc += g * len(batch["scores"]) / len(rows)
        with torch.no_grad():
            p = sequence_scores(logp, lens)
            valid = lens > 0
            t, s = batch["teacher"] & valid, ~batch["teacher"] & valid
            gap = batch["scores"][:, :, None] - batch["scores"][:, None, :]
            mask = t[:, :, None] & s[:, None, :] & (gap >= 0)
            active += int((mask & (p[:, None, :] > p[:, :, None])).sum())
            pairs += int(mask.sum())
            rank += float(out["rank_loss"]) * len(batch["scores"])
            ft += float(out["ft_loss"]) * len(batch["scores"])
    n = len(rows)
    flat = {k: torch.cat([g.flatten() for g in v]) for k, v in grads.items()}
    norm = {k: float(v.norm()) for k, v in flat.items()}
    cos = float(torch.nn.functional.cosine_similarity(flat["rank_loss"], flat["ft_loss"], dim=0))
    return {"model": model_path, "rank_reduction": rank_reduction, "pairs": pairs, "active_frac": round(active / max(pairs, 1), 4),
            "rank_loss": round(rank / n, 5), "ft_loss": round(ft / n, 5),
            "rank_over_ft": round(rank / ft, 4) if ft else None, "grad_norm_rank": round(norm["rank_loss"], 5),
            "grad_norm_ft": round(norm["ft_loss"], 5), "grad_cosine": round(cos, 4)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", required=True, help="RRTF rows (JSONL), e.g. <run>/train/rrtf-rows.jsonl")
    ap.add_argument("--model", action="append", required=True, help="model directory (repeatable)")
    ap.add_argument("--limit", type=int, default=None, help="first N rows only")
    ap.add_argument("--rank-reduction", action="append", default=None, choices=["pair", "prompt", "sum"],
                    help="reduction of the rank term (repeatable; default: pair, the preset's)")
    args = ap.parse_args(argv)
    with open(args.rows) as fh:
        rows = [json.loads(line) for line in fh if line.strip()][:args.limit]
    for path in args.model:
        for reduction in args.rank_reduction or ["pair"]:
            print(json.dumps(measure(path, rows, rank_reduction=reduction)))


if __name__ == "__main__":
    main()
