"""The run's report: `report.md`, a page to paste into a paper draft, its figures, and the stdout table.

The loop recipe calls `write_report` last; a rerun whose stages are all skipped rebuilds the page from
the artifacts in seconds:

    python -m align.recipes.rrtf --base tiny        # ... -> runs/tiny/report.md, eval.png, outcomes.png, training.png

Everything is read from the run directory: `eval/<stage>.json(l)` (align.evaluate's result and its
per-problem rows), `problems.jsonl`/`rejected.jsonl`/`ranked.jsonl` (the funnel), the rank stage's
sample statistics, `train/<method>/log_history.jsonl` (the Trainer's logged steps, written by
align.train.checkpoints.fit) and the stage manifests (times).

Intervals: with one sample per problem (greedy pass@1) the 95% Wilson score interval of the binomial
proportion over problems (Wilson 1927; recommended over the normal interval by Brown, Cai and DasGupta
2001, doi:10.1214/ss/1009213286); with several samples per problem a 95% percentile bootstrap over
problems (2000 resamples, seed 0).
"""
from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

from rank.records import read_jsonl, write_atomic

# The outcome of one program, worst first; the sandbox's other statuses (timeout, memory, sandbox_error)
# are counted as "timeout / other".
OUTCOMES = {"compile_error": "compile error", "runtime_error": "runtime error", "failed": "failed",
            "partial": "partial", "passed": "passed"}
OTHER = "timeout / other"
COLORS = {"compile error": "#7f7f7f", "runtime error": "#d62728", "failed": "#ff7f0e", "partial": "#bcbd22",
          "passed": "#2ca02c", OTHER: "#9467bd"}
LABELS = {"student_before": "student (before)", "teacher": "teacher", "student_after": "student (after)"}
CURVES = {"loss": "total loss", "rank_loss": "rank term", "ft_loss": "CE (fine-tune) term"}


# ------------------------------------------------------------------ statistics

def wilson(c: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion c/n (z = 1.96: 95%)."""
    if n == 0:
        return 0.0, 1.0
    p = c / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap(values: list[float], iters: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of `values`."""
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(iters))
    return means[int(0.025 * iters)], means[int(0.975 * iters) - 1]


def pass_interval(rows: list[dict]) -> tuple[float, float, float]:
    """(pass@1, low, high) over per-problem rows of align.evaluate (`n` samples, `c` passed)."""
    values = [r["c"] / r["n"] for r in rows]
    mean = sum(values) / len(values)
    if all(r["n"] == 1 for r in rows):
        return (mean, *wilson(sum(r["c"] for r in rows), len(rows)))
    return (mean, *bootstrap(values))


def outcome_counts(rows: list[dict]) -> Counter:
    """Outcome of every evaluated program (all samples of all problems)."""
    return Counter(OUTCOMES.get(s["status"], OTHER) for r in rows for s in r["samples"])


def paired(before: list[dict], after: list[dict]) -> tuple[int, int]:
    """(fixed, broken): problems the student solves after but not before, and the reverse (greedy)."""
    was = {r["id"]: r["c"] > 0 for r in before}
    now = {r["id"]: r["c"] > 0 for r in after}
    common = was.keys() & now.keys()
    return sum(now[i] and not was[i] for i in common), sum(was[i] and not now[i] for i in common)


# ------------------------------------------------------------------ reading the run

def _reason(row: dict) -> str:
    """A rejection's reason code with its meaning (evol/reasons.py): 'too_deep (the composition is ...)'."""
    from evol.reasons import REASONS

    code = row.get("code") or str(row.get("reason", "unknown")).split(":")[0]   # runs before reason codes
    return f"{code} ({REASONS[code]})" if code in REASONS else code


def rejections_table(root: Path) -> list[str]:
    """Dropped evolutions per round, operator and reason code (evol/reasons.py), as markdown lines."""
    path = root / "rejected.jsonl"
    rows = [r for r in read_jsonl(path) if r.get("code")] if path.exists() else []
    if not rows:
        return []
    counts = Counter((r.get("round"), r.get("operator") or "-", r["code"]) for r in rows)
    return ["", "Dropped problems by round, operator and reason code:", "",
            "| round | operator | code | problems |", "|---|---|---|---|",
            *(f"| {rnd} | {op} | {code} | {n} |" for (rnd, op, code), n in sorted(counts.items(), key=str))]


def funnel(root: Path, train_rows: int | None) -> list[tuple[str, int]]:
    """Problems from seeds to training rows, with rejections by reason."""
    problems = read_jsonl(root / "problems.jsonl") if (root / "problems.jsonl").exists() else []
    rejected = read_jsonl(root / "rejected.jsonl") if (root / "rejected.jsonl").exists() else []
    seeds = sum(1 for p in problems if not p.get("lineage", {}).get("round"))
    rows = [("seed problems kept", seeds), ("evolved problems kept", len(problems) - seeds)]
    # rows carry a reason code (evol/reasons.py); older runs only a reason text
    for reason, n in Counter(_reason(r) for r in rejected).most_common():
        rows.append((f"rejected: {reason}", n))
    rows.append(("problems sampled", len(problems)))
    if (root / "ranked.jsonl").exists():
        groups = len(read_jsonl(root / "ranked.jsonl"))
        rows += [("dropped by the ranking strategy", len(problems) - groups), ("ranked groups", groups)]
    if train_rows is not None:
        rows.append(("training rows", train_rows))
    return rows


def _percent(x: float) -> str:
    return f"{100 * x:.1f}"


# ------------------------------------------------------------------ figures

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pass(path: Path, table: dict[str, dict[str, tuple]]) -> None:
    """Grouped bars: pass@1 per model and suite, with the interval as an error bar."""
    plt = _plt()
    suites, labels = list(table), list(dict.fromkeys(k for t in table.values() for k in t))
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(suites) * len(labels) / 2, 3))
    width = 0.8 / len(labels)
    for j, label in enumerate(labels):
        xs = [i + (j - (len(labels) - 1) / 2) * width for i, s in enumerate(suites) if label in table[s]]
        vals = [table[s][label] for s in suites if label in table[s]]
        ax.bar(xs, [v[0] for v in vals], width, label=LABELS.get(label, label),
               yerr=[[v[0] - v[1] for v in vals], [v[2] - v[0] for v in vals]], capsize=3)
    ax.set_xticks(range(len(suites)), suites)
    ax.set_ylabel("pass@1")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_outcomes(path: Path, counts: dict[str, Counter]) -> None:
    """Stacked horizontal bars: the share of each outcome per model."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * len(counts)))
    names = list(counts)
    left = [0.0] * len(names)
    for outcome in [*OUTCOMES.values(), OTHER]:
        share = [counts[m][outcome] / max(1, sum(counts[m].values())) for m in names]
        if any(share):
            ax.barh(names, share, left=left, color=COLORS[outcome], label=outcome)
            left = [a + b for a, b in zip(left, share)]
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of evaluated programs")
    ax.invert_yaxis()
    ax.legend(fontsize=7, ncol=3, frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training(path: Path, steps: list[dict]) -> None:
    """Loss, rank term and CE term per logged step."""
    plt = _plt()
    keys = [k for k in CURVES if any(k in h for h in steps)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(h["step"], h[key]) for h in steps if key in h]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 30 else None)
        ax.set_title(CURVES[key], fontsize=9)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------ the page

def write_report(run: Any, *, title: str, method: str, models: dict[str, Any], evals: dict[str, dict[str, str]],
                 train_dir: str | Path | None = None, total_s: float | None = None) -> str:
    """Write report.md and its figures into `run.root` (an align.rundir.RunDir); return the stdout table.

    `evals` maps suite -> model label (student_before, teacher, student_after) -> eval stage name, whose
    artifacts are `eval/<stage>.json` and `eval/<stage>.jsonl`; `models` names the models for the header."""
    root = Path(run.root)
    rows = {s: {m: read_jsonl(root / "eval" / f"{stage}.jsonl") for m, stage in by.items()}
            for s, by in evals.items()}
    table = {s: {m: pass_interval(r) for m, r in by.items()} for s, by in rows.items()}
    counts = {f"{LABELS.get(m, m)}" + ("" if s == "heldout" else f" [{s}]"): outcome_counts(r)
              for s, by in rows.items() for m, r in by.items()}
    stats = {r.name: r for r in run.results}
    train_stage = stats.get(f"train-{method}")
    log = [h for h in read_jsonl(Path(train_dir) / "log_history.jsonl") if "step" in h and "loss" in h] \
        if train_dir and (Path(train_dir) / "log_history.jsonl").exists() else []

    md = [f"# {title}: {method}", ""]
    md += [f"- {k}: `{v}`" for k, v in models.items()]
    md += ["", "## Pass@1", ""]
    head = ["model", *(f"{s} (n={len(next(iter(rows[s].values())))})" for s in rows)]
    md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    labels = list(dict.fromkeys(m for by in rows.values() for m in by))
    for m in labels:
        cells = [f"{_percent(t[0])} [{_percent(t[1])}, {_percent(t[2])}]" if (t := table[s].get(m)) else "-"
                 for s in rows]
        md.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " |")
    md += ["", "pass@1 in percent, greedy decoding, every program run in the sandbox; brackets: 95% Wilson score "
               "interval over problems (percentile bootstrap over problems when a problem has several samples)."]
    for s, by in rows.items():
        if "student_before" in by and "student_after" in by:
            fixed, broken = paired(by["student_before"], by["student_after"])
            delta = table[s]["student_after"][0] - table[s]["student_before"][0]
            md.append(f"{s}: the student gains {100 * delta:+.1f} points; it now solves {fixed} problems it "
                      f"failed before and fails {broken} it solved before.")
    md += ["", "![pass@1](eval.png)", "", "## Outcomes of the evaluated programs", ""]
    cols = [*OUTCOMES.values(), OTHER]
    md += ["| model | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for name, c in counts.items():
        total = max(1, sum(c.values()))
        md.append(f"| {name} | " + " | ".join(f"{c[o]} ({_percent(c[o] / total)}%)" for o in cols) + " |")
    md += ["", "![outcomes](outcomes.png)", ""]
    sampled = (stats.get("rank").stats.get("sampled") if stats.get("rank") else None) or {}
    if sampled:
        md += ["Sampled responses (the training data before ranking):", "",
               "| model | samples | pass rate | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 3)]
        for model, s in sampled.items():
            c = Counter({OUTCOMES.get(k, OTHER): 0 for k in s["statuses"]})
            for k, v in s["statuses"].items():
                c[OUTCOMES.get(k, OTHER)] += v
            md.append(f"| {model} | {s['n']} | {_percent(s['pass_rate'])}% | " + " | ".join(str(c[o]) for o in cols) + " |")
        md.append("")
    md += ["## Training", ""]
    if log:
        last = log[-1]
        md.append(f"{len(log)} logged steps up to step {last['step']}; last: " +
                  ", ".join(f"{CURVES[k]} {last[k]:.4f}" for k in CURVES if k in last) + ".")
        md += ["", "![training](training.png)", ""]
        if (Path(train_dir) / "runs").is_dir():   # train.args.report_to: [tensorboard]
            md += [f"TensorBoard (the same curves): `tensorboard --logdir {Path(train_dir) / 'runs'}`", ""]
    else:
        md += ["No training curve: no logged step in train/<method>/log_history.jsonl (is train.args.logging_steps "
               "larger than the number of steps?).", ""]
    md += ["## Problems", "", "| step | problems |", "|---|---|"]
    train_rows = train_stage.stats.get("rows") if train_stage else None
    md += [f"| {k} | {v} |" for k, v in funnel(root, train_rows)]
    md += rejections_table(root)
    md += ["", "## Stages", "", "| stage | this run | seconds |", "|---|---|---|"]
    md += [f"| {r.name} | {'reused' if r.skipped else 'ran'} | {r.seconds:.1f} |" for r in run.results]
    if total_s is not None:
        md += ["", f"Wall time of this invocation: {total_s:.0f} s (reused stages show the seconds they took "
                   f"when they ran)."]
    write_atomic(root / "report.md", "\n".join(md) + "\n")
    plot_pass(root / "eval.png", table)
    plot_outcomes(root / "outcomes.png", counts)
    if log:
        plot_training(root / "training.png", log)
    return stdout_table(table, rows)


def stdout_table(table: dict[str, dict[str, tuple]], rows: dict[str, dict[str, list]]) -> str:
    """The terminal summary: pass@1 per model (rows) and suite (columns)."""
    suites = list(table)
    lines = [f"{'model':<18}" + "".join(f"{s + f' (n={len(next(iter(rows[s].values())))})':>22}" for s in suites)]
    for m in dict.fromkeys(k for t in table.values() for k in t):
        lines.append(f"{LABELS.get(m, m):<18}" + "".join(
            f"{(f'{t[0]:.3f} [{t[1]:.2f}, {t[2]:.2f}]' if (t := table[s].get(m)) else '-'):>22}" for s in suites))
    return "\n".join(lines)
