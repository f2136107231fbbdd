"""Model entries as the plain `generate` callable evol takes, and the loop's problems stage.

    gen = text_fn(spec, path, run, "evolve-r1")            # list[str] -> list[str], Ray actors, resumable
    problems, rejected, stats = problems_stage(cfg, run, models)

evol never imports align (docs/design.md §2): it takes `generate(prompts) -> texts`. Here a model entry
(`ModelSpec`: backend, template, options, replicas) becomes that callable. An instruction is shown
to the model through its template like a problem statement (a chat model gets one user message, an
alpaca model its instruction format), and generation stops only at the end of text: the answers are
prose plus code, so a code template's stop set would cut them.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict
from typing import Any, Callable

from align.prompting import EOS
from rank.records import Problem

_ENTRY = re.compile(r"^(student|teachers)(?:\[(\d+)\]|\.(\d+))?$")


def instruction_problem(text: str) -> Problem:
    """An instruction dressed as a Problem, so any template can render it."""
    return Problem(id="instruction", prompt=text, entry_point="solution", tests=["pass"])


class TextGenerator:
    """One backend replica: a shard of {"i", "prompt"} rows -> {"i", "text"} rows (a Ray actor)."""

    def __init__(self, spec: dict, path: str):
        from align.generate import SamplingParams, load_backend
        from align.templates import get_template

        self.template = get_template(spec["template"])
        self.params = SamplingParams(**{**spec["sample"], "n": 1, "stop": [EOS]})
        self.backend = load_backend(spec["backend"], path, **spec["options"])

    def generate(self, rows: list[dict]) -> list[dict]:
        prompts = [self.template.render(instruction_problem(r["prompt"])) for r in rows]
        outs = self.backend.generate(prompts, self.params)
        return [{"i": r["i"], "text": texts[0]} for r, texts in zip(rows, outs)]


def text_fn(spec: Any, path: str, run: Any, stage: str, ray_address: str | None = None,
            num_cpus: int | None = None, shard_size: int = 32) -> Callable[[list[str]], list[str]]:
    """The `list[str] -> list[str]` callable for model entry `spec` (loaded from `path`), fanned out
    over `spec.replicas` Ray actors in resumable shards `<stage>.shards/` of the run directory."""
    from align import fanout, stages

    def generate(prompts: list[str]) -> list[str]:
        import ray

        if not prompts:
            return []
        fanout.init_ray(ray_address, num_cpus)
        actors = fanout.start_actors(TextGenerator, (asdict(spec), path), spec.replicas, stages.actor_resources(spec))
        try:
            rows = run.sharded(stage, [{"i": i, "prompt": p} for i, p in enumerate(prompts)], shard_size, None,
                               run.fingerprint([asdict(spec), path, prompts], []),
                               executor=lambda _fn, shards: fanout.actor_map(actors, "generate", shards))
        finally:
            for a in actors:
                ray.kill(a)
        return [r["text"] for r in sorted(rows, key=lambda r: r["i"])]
    return generate


def evolve_spec(cfg: Any) -> Any | None:
    """The model entry `evolve.model` names: "student", "teachers[i]" (or "teachers.i"), the ref of one
    of the run's models, or an entry of its own (ref, backend, options ...). None when unset."""
    m = cfg.evolve.model
    if m is None:
        return None
    hit = _ENTRY.match(m.ref)
    if hit:
        if hit.group(1) == "student":
            return cfg.models.student
        i = int(hit.group(2) or hit.group(3) or 0)
        if i >= len(cfg.models.teachers):
            raise ValueError(f"evolve.model: {m.ref!r} but the run has {len(cfg.models.teachers)} teacher(s)")
        return cfg.models.teachers[i]
    own = {f.name for f in dataclasses.fields(m)} - {"ref"}
    same_defaults = all(getattr(m, f) == getattr(type(m)(), f) for f in own)
    named = [s for s in (cfg.models.student, *cfg.models.teachers) if s.ref == m.ref]
    return named[0] if named and same_defaults else m


def problems_stage(cfg: Any, run: Any, model_path: Callable[[str], str]) -> dict:
    """Seeds, Evol-Instruct rounds (built-in tasks programmatically, others with `evolve.model`),
    exact + near dedup among the evolved problems, decontamination of all against benchmark test problems.
    Writes problems.jsonl, rejected.jsonl, decontamination.json and datasets/problems; returns stats."""
    from align import stages
    from align.publish import DatasetCard, write_dataset
    from evol.dedup import dedup_and_decontaminate
    from evol.evolve import EvolveResult, evolve
    from evol.verify import sandbox_runner
    from rank.records import write_atomic, write_jsonl
    from rank.sandbox import SandboxConfig

    seeds = stages.seed_problems(cfg.data)
    spec = evolve_spec(cfg)
    generate = None
    if spec is not None:
        gen_path = model_path(spec.ref)
        generate = _per_round(lambda stage: text_fn(spec, gen_path, run, stage, cfg.ray_address, cfg.num_cpus))
    runner = sandbox_runner(SandboxConfig(workers=cfg.execute.workers, timeout_s=cfg.execute.timeout_s,
                                          unsafe=cfg.execute.unsafe))
    res: EvolveResult = evolve(seeds, rounds=cfg.evolve.rounds, operators=cfg.evolve.operators, seed=cfg.evolve.seed,
                               generate=generate, framing=cfg.evolve.framing, run_tests=runner,
                               agreement_samples=cfg.evolve.agreement_samples)
    # Near duplicates among the evolutions only: an evolution is by design a small edit of its parent.
    evolved, dropped, _ = dedup_and_decontaminate(res.evolved, threshold=cfg.data.dedup_threshold)
    kept, contaminated, report = dedup_and_decontaminate(
        [p for p in res.problems if p.lineage.round == 0] + evolved, benchmarks=decontamination_suites(cfg),
        droppable=lambda p: False)
    dropped += contaminated
    by_id = {p.id: p for p in res.problems}
    for d in dropped:
        p = by_id[d["id"]]
        res.rejected.append({"parent": p.lineage.parent, "round": p.lineage.round, "operator": p.lineage.operator,
                             "code": d["code"], "detail": d["detail"], "reason": f"{d['code']}: {d['detail']}",
                             "problem": p.id})
    res.problems = kept
    write_jsonl(run.path("problems.jsonl"), kept)
    write_jsonl(run.path("rejected.jsonl"), res.rejected)
    write_jsonl(run.path("heldout.jsonl"), stages.heldout_problems(cfg.data))
    write_atomic(run.path("decontamination.json"), __import__("json").dumps(report, indent=1))
    stats = {"seeds": len(seeds), "problems": len(kept), "evolved": len(res.evolved),
             "rejected_total": len(res.rejected), **res.stats(),
             "decontaminated": {n: b["removed"] for n, b in report["benchmarks"].items()}}
    write_dataset(run.path("datasets/problems"), {"train": [asdict(p) for p in kept]}, DatasetCard(
        title=f"{cfg.name}: problems", produced_by=f"python -m align.recipes.{cfg.method} --base {cfg.base} "
        f"(problems stage, run directory {run.root})",
        description="Seed problems and their Evol-Instruct evolutions (arXiv:2306.08568), each evolved "
                    "problem's tests executed against its reference in the sandbox (meta.tests_verified).",
        config={"data": asdict(cfg.data), "evolve": asdict(cfg.evolve)}, stats=stats, decontamination=report))
    return stats


def decontamination_suites(cfg: Any) -> list[str]:
    """`data.decontaminate`, or by default HumanEval plus the run's eval benchmarks."""
    from align import stages

    if cfg.data.decontaminate is not None:
        return list(cfg.data.decontaminate)
    return list(dict.fromkeys(["humaneval", *stages.benchmarks(cfg)]))


def _per_round(make: Callable[[str], Callable[[list[str]], list[str]]]) -> Callable[[list[str]], list[str]]:
    """evol calls `generate` once per round (and once more for agreement samples): give each call
    its own resumable shard folder, so a killed run resumes inside the round it was in."""
    calls = {"n": 0}

    def generate(prompts: list[str]) -> list[str]:
        calls["n"] += 1
        return make(f"evolve-call{calls['n']}")(prompts)
    return generate


def publish_rows(cfg: Any, run: Any, rows_file: Any) -> dict:
    """The training rows of a loop run as datasets/<method>-rows (the card carries the run's config)."""
    from align.config_loader import to_dict
    from align.publish import DatasetCard, write_dataset
    from rank.records import read_jsonl

    rows = read_jsonl(rows_file)
    write_dataset(run.path(f"datasets/{cfg.method}-rows"), {"train": rows}, DatasetCard(
        title=f"{cfg.name}: {cfg.method} training rows", produced_by=f"python -m align.recipes.{cfg.method} "
        f"--base {cfg.base} (run directory {run.root})",
        description=f"Training rows of the {cfg.method} method built from ranked groups of executed samples.",
        config=to_dict(cfg), stats={"rows": len(rows)}))
    return {"rows": len(rows)}
