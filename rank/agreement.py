"""How much ranking strategies agree on the same verdicts (config `rank.strategies`).

For every pair of strategies, over the prompts both keep: Kendall's tau-b between the two scorings
of the prompt's responses (ties handled; undefined when either scoring is constant, then left out of
the mean and counted), its mean, quantiles and a histogram; and how often the chosen best response
(the first of the group, the one SFT and the RRTF fine-tuning term train on) differs, in total and
whether b's best is strictly worse than a's under a's scores (and the reverse): a differing best
that the other strategy scores equal is only a tie broken another way.

    report = agreement({"pangu": groups_a, "codet": groups_b})    # {strategy: [RankedGroup]}
    markdown(report)

Standard library only (rank/ must start fast).
"""
from __future__ import annotations

from itertools import combinations
from statistics import mean, quantiles

from .records import RankedGroup

BINS = 10   # histogram of tau over [-1, 1]


def kendall_tau_b(x: list[float], y: list[float]) -> float | None:
    """Kendall's tau-b of two paired score lists (ties corrected); None when either is constant."""
    if len(x) != len(y):
        raise ValueError(f"kendall_tau_b: lists of different lengths ({len(x)}, {len(y)})")
    concordant = discordant = ties_x = ties_y = 0
    for i, j in combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            ties_x += 1
        elif dy == 0:
            ties_y += 1
        elif (dx > 0) == (dy > 0):
            concordant += 1
        else:
            discordant += 1
    denom = ((concordant + discordant + ties_x) * (concordant + discordant + ties_y)) ** 0.5
    return (concordant - discordant) / denom if denom else None


def _histogram(values: list[float]) -> list[dict]:
    counts = [0] * BINS
    for v in values:
        counts[min(int((v + 1) / 2 * BINS), BINS - 1)] += 1
    return [{"lo": round(-1 + 2 * i / BINS, 2), "hi": round(-1 + 2 * (i + 1) / BINS, 2), "count": c}
            for i, c in enumerate(counts)]


def compare_pair(a: list[RankedGroup], b: list[RankedGroup]) -> dict:
    """Agreement of two strategies' groups (matched by problem and candidate ids)."""
    by_a = {g.problem_id: g for g in a}
    by_b = {g.problem_id: g for g in b}
    common = sorted(set(by_a) & set(by_b))
    taus: list[float] = []
    undefined = differs = worse_under_a = worse_under_b = 0
    for pid in common:
        sa = {r.candidate_id: r.score for r in by_a[pid].responses}
        sb = {r.candidate_id: r.score for r in by_b[pid].responses}
        ids = sorted(set(sa) & set(sb))
        tau = kendall_tau_b([sa[i] for i in ids], [sb[i] for i in ids])
        if tau is None:
            undefined += 1
        else:
            taus.append(tau)
        best_a, best_b = by_a[pid].responses[0].candidate_id, by_b[pid].responses[0].candidate_id
        if best_a != best_b:
            differs += 1
            worse_under_a += sa.get(best_b, float("-inf")) < sa[best_a]
            worse_under_b += sb.get(best_a, float("-inf")) < sb[best_b]
    n = len(common)
    out = {"prompts_a": len(a), "prompts_b": len(b), "prompts_both": n,
           "tau_defined": len(taus), "tau_undefined": undefined,
           "tau_mean": round(mean(taus), 4) if taus else None,
           "tau_quantiles": [round(q, 4) for q in quantiles(taus, n=4, method="inclusive")] if len(taus) > 1 else None,
           "tau_min": round(min(taus), 4) if taus else None, "tau_max": round(max(taus), 4) if taus else None,
           "tau_histogram": _histogram(taus),
           "best_differs": differs, "b_best_worse_under_a": worse_under_a, "a_best_worse_under_b": worse_under_b}
    for k in ("best_differs", "b_best_worse_under_a", "a_best_worse_under_b"):
        out[k + "_frac"] = round(out[k] / n, 4) if n else None
    return out


def agreement(rankings: dict[str, list[RankedGroup]]) -> dict:
    """{"strategies": [...], "pairs": {"a vs b": compare_pair(...)}} over every pair of strategies."""
    names = list(rankings)
    return {"strategies": names,
            "pairs": {f"{x} vs {y}": compare_pair(rankings[x], rankings[y]) for x, y in combinations(names, 2)}}


def markdown(report: dict) -> str:
    """The report as a Markdown table, one row per pair of strategies."""
    lines = ["# Ranker agreement", "",
             "Kendall's tau-b per prompt between two strategies' scores of the same responses; "
             "`best differs`: the first-ranked response is another one (`worse`: and it is "
             "strictly worse under one strategy's own scores than the best it chose).", "",
             "| a vs b | prompts (a / b / both) | tau mean | tau quartiles | tau undefined | best differs "
             "| b's best worse under a | a's best worse under b |",
             "|---|---|---|---|---|---|---|---|"]
    for name, p in report["pairs"].items():
        quart = " / ".join(f"{q:.2f}" for q in p["tau_quantiles"]) if p["tau_quantiles"] else "-"
        tau = f"{p['tau_mean']:.3f}" if p["tau_mean"] is not None else "-"
        frac = lambda k: f"{p[k]} ({p[k + '_frac']:.1%})" if p[k + "_frac"] is not None else "-"  # noqa: E731
        lines.append(f"| {name} | {p['prompts_a']} / {p['prompts_b']} / {p['prompts_both']} | {tau} | {quart} "
                     f"| {p['tau_undefined']} | {frac('best_differs')} | {frac('b_best_worse_under_a')} "
                     f"| {frac('a_best_worse_under_b')} |")
    return "\n".join(lines) + "\n"
