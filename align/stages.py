"""The stages of the loop as small functions over records; recipes call them top to bottom.

Each function takes plain records and config sections and returns records; the recipe
decides where they are stored (align.rundir) and how work fans out (align.fanout).
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

from align.pipeline_config import DataConfig, EvolveConfig, SamplingConfig
from align.prompting import format_prompt
from rank.extract import extract_code
from rank.records import Candidate, Problem, RankedGroup, ScoredResponse, Verdict, write_atomic
from rank.strategies import get_strategy


# ------------------------------------------------------------------ problems

def load_seeds(cfg: DataConfig) -> list[Problem]:
    """Seed problems: the built-in task family's train split, or a benchmark/JSONL file."""
    from evol import seeds, tasks

    if cfg.source == "tasks":
        return tasks.generate_problems(cfg.n_train, split="train", seed=cfg.seed,
                                       min_depth=cfg.min_depth, max_depth=cfg.max_depth)
    kind, _, path = cfg.source.partition(":")
    loaders = {"humaneval": seeds.load_humaneval, "mbpp": seeds.load_mbpp}
    if path and kind in loaders:
        return loaders[kind](path)
    return seeds.load_jsonl(cfg.source)


def heldout_problems(cfg: DataConfig) -> list[Problem]:
    from evol import tasks

    return tasks.generate_problems(cfg.n_heldout, split="heldout", seed=cfg.seed + 1,
                                   min_depth=cfg.min_depth, max_depth=cfg.max_depth)


def evolve_problems(seeds: list[Problem], cfg: EvolveConfig):
    """Evol-Instruct rounds over the seeds; returns (problems incl. seeds, rejected rows)."""
    from evol.evolve import evolve

    res = evolve(seeds, rounds=cfg.rounds, operators=cfg.operators, seed=cfg.seed)
    return res.problems, res.rejected


# ------------------------------------------------------------------ sampling

class Sampler:
    """Holds one generation backend; turns a shard of problems into candidates.

    Used in-process or as a Ray actor (`ray.remote(Sampler)`), one per model replica."""

    def __init__(self, backend: str, model_path: str, model_name: str, role: str,
                 params: dict, batch_size: int):
        from align.generate import SamplingParams, load_backend

        self.model_name, self.role, self.params_dict = model_name, role, params
        self.params = SamplingParams(**params)
        self.backend = load_backend(backend, model_path, batch_size=batch_size)

    def sample(self, problems: list[dict]) -> list[dict]:
        prompts = [format_prompt(p["prompt"]) for p in problems]
        outs = self.backend.generate(prompts, self.params)
        rows = []
        for p, texts in zip(problems, outs):
            for i, text in enumerate(texts):
                rows.append(asdict(Candidate(
                    id=Candidate.make_id(p["id"], self.model_name, self.params_dict, i),
                    problem_id=p["id"], model=self.model_name, role=self.role, text=text,
                    code=extract_code(text, p["entry_point"]), params=self.params_dict)))
        return rows


def sampling_params(s: SamplingConfig) -> dict:
    return asdict(s)


# ------------------------------------------------------------------ execution

def execute_shard(rows: list[dict], cfg: dict) -> list[dict]:
    """Run a shard of {candidate, problem} rows through the sandbox; returns Verdict dicts.
    `cfg` is an ExecuteConfig as a dict (plain data, so the call can be a Ray task)."""
    from rank.sandbox import Job, SandboxConfig, run_jobs

    jobs = [Job(**r) for r in rows]
    sc = SandboxConfig(workers=cfg["workers"], timeout_s=cfg["timeout_s"], unsafe=cfg["unsafe"])
    return [asdict(v) for v in run_jobs(jobs, sc)]


def execution_rows(candidates: list[Candidate], problems: dict[str, Problem]) -> list[dict]:
    """One sandbox job per candidate (rank.sandbox.job_for), as plain dicts for Ray tasks."""
    from rank.sandbox import job_for

    return [asdict(job_for(problems[c.problem_id], c.code, c.id)) for c in candidates]


# ------------------------------------------------------------------ ranking

def rank_groups(problems: dict[str, Problem], candidates: list[Candidate], verdicts: list[Verdict],
                strategy: str) -> list[RankedGroup]:
    """Join candidates with verdicts per problem and rank each group with `strategy`."""
    rank = get_strategy(strategy)
    by_id = {v.candidate_id: v for v in verdicts}
    per_problem: dict[str, list[ScoredResponse]] = defaultdict(list)
    for c in candidates:
        v = by_id[c.id]
        per_problem[c.problem_id].append(ScoredResponse(
            candidate_id=c.id, model=c.model, role=c.role, code=c.code, score=0.0,
            status=v.status, passed=v.passed, total=v.total, duration_s=v.duration_s,
            outcomes=list(v.outcomes)))
    groups = []
    for pid, responses in per_problem.items():
        g = rank(pid, problems[pid].prompt, responses)
        if g is not None:
            groups.append(g)
    return groups


def rank_agreement(root: Path, problems: dict[str, Problem], candidates: list[Candidate],
                   verdicts: list[Verdict], strategy: str, groups: list[RankedGroup],
                   others: list[str]) -> dict:
    """Rank the same verdicts with each of `others` (ranked-<name>.jsonl), compare every strategy
    with every other (rank-agreement.json and .md in `root`); returns the mean tau per pair."""
    from rank.agreement import agreement, markdown
    from rank.records import write_atomic, write_jsonl

    rankings = {strategy: groups}
    for name in others:
        if name not in rankings:
            rankings[name] = rank_groups(problems, candidates, verdicts, name)
            write_jsonl(root / f"ranked-{name.replace(':', '_').replace('.', '_')}.jsonl", rankings[name])
    report = agreement(rankings)
    write_atomic(root / "rank-agreement.json", json.dumps(report, indent=1))
    write_atomic(root / "rank-agreement.md", markdown(report))
    return {pair: p["tau_mean"] for pair, p in report["pairs"].items()}


def verdict_summary(candidates: list[Candidate], verdicts: list[Verdict]) -> dict:
    """Per model: number of samples, pass rate and the count of each status (for the report)."""
    status = {v.candidate_id: v.status for v in verdicts}
    out: dict[str, dict] = {}
    for c in candidates:
        m = out.setdefault(c.model, {"n": 0, "statuses": {}})
        m["n"] += 1
        m["statuses"][status[c.id]] = m["statuses"].get(status[c.id], 0) + 1
    for m in out.values():
        m["pass_rate"] = round(m["statuses"].get("passed", 0) / m["n"], 4)
    return out


# ------------------------------------------------------------------ report

def write_report(path: Path, name: str, evals: dict, stages: list, extra: dict) -> None:
    lines = [f"# Run {name}", "", "| model | held-out pass@1 |", "|---|---|"]
    lines += [f"| {k} | {v['pass@1']:.3f} |" for k, v in evals.items()]
    lines += ["", "| stage | skipped now | seconds (when it ran) | stats |", "|---|---|---|---|"]
    lines += [f"| {s.name} | {s.skipped} | {s.seconds:.1f} | {s.stats} |" for s in stages]
    lines += ["", "```", *(f"{k}: {v}" for k, v in extra.items()), "```", ""]
    write_atomic(path, "\n".join(lines))


def plot_eval(path: Path, evals: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    names = list(evals)
    ax.bar(names, [evals[n]["pass@1"] for n in names], color=["#999", "#2a7", "#27c"][: len(names)])
    ax.set_ylabel("held-out pass@1")
    ax.set_ylim(0, 1)
    for i, n in enumerate(names):
        ax.text(i, evals[n]["pass@1"] + 0.02, f"{evals[n]['pass@1']:.2f}", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
