"""Self-instruct dataset job (Code Llama §2.5, arXiv:2308.12950): questions -> tests -> solutions -> data.

    python -m align.recipes.self_instruct --base tiny          # embedded default, a few minutes on CPU
    python -m align.recipes.self_instruct --base tiny solve.n=4 questions.n=50 --push-to-hub ./copy
    python -m align.recipes.self_instruct --base starcoder-15b --dry-run

Stages (each resumable in runs/<name>/, a rerun skips finished ones; generation and execution fan
out over Ray): questions (a generator of evol.self_instruct: the built-in task family on the
tiny default, or a model entry writing interview questions from seed topics / problems) ->
dedup (exact + MinHash near duplicates, decontamination against HumanEval / MBPP) -> tests
(the model's asserts, or the task family's) -> solve (N solutions per question; Code Llama: 10)
-> execute (sandbox) -> select (the first passing solution is the answer, its tests verified in
the sandbox as discriminative; failing solutions are rejected answers). Output: the funnel,
and datasets (Parquet + JSONL + card) of SFT rows, DPO pairs and the verified problems.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from align import fanout, stages
from align.config_loader import ConfigError, dump, load
from align.recipes.loop_config import ExecuteConfig, ModelSpec, SamplingConfig
from align.recipes import cli
from align.rundir import RunDir
from rank.plugins import UnknownNameError
from rank.records import Candidate, Problem, Verdict, read_jsonl, write_atomic, write_jsonl

# Code Llama §2.5's funnel, for comparison in the printout.
CODE_LLAMA_FUNNEL = {"questions": 62_000, "after_dedup": 52_000, "with_passing_solution": 14_000}


@dataclass
class QuestionsConfig:
    generator: str = "tasks"          # evol.self_instruct.QUESTION_GENERATORS: tasks | model | pkg.mod:fn
    model: ModelSpec | None = None     # for generator "model"
    n: int = 200
    per_prompt: int = 5               # questions asked for per model prompt
    topics: list[str] | None = None   # None = evol.self_instruct.TOPICS
    seeds: str | None = None          # seed problems shown as examples (any evol.seeds source)
    seed: int = 0


@dataclass
class DedupConfig:
    near_threshold: float = 0.7       # MinHash/Jaccard of 5-token shingles (evol.dedup)
    decontaminate: list[str] = field(default_factory=lambda: ["humaneval"])   # evol.decontam specs


@dataclass
class TestsConfig:
    generator: str = "tasks"          # evol.self_instruct.TEST_GENERATORS: tasks | model | pkg.mod:fn
    model: ModelSpec | None = None
    min_tests: int = 3


@dataclass
class SolveConfig:
    model: ModelSpec = field(default_factory=lambda: ModelSpec("tiny:teacher", sample=SamplingConfig(n=10)))
    shard_size: int = 64              # questions per resumable shard


@dataclass
class SelfInstructConfig:
    name: str = "tiny-self-instruct"
    base: str = "tiny"
    method: str = "self_instruct"
    ray_address: str | None = None
    num_cpus: int | None = None
    tiny: dict = field(default_factory=dict)        # -> align.tiny.TinyConfig
    questions: QuestionsConfig = field(default_factory=QuestionsConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    tests: TestsConfig = field(default_factory=TestsConfig)
    solve: SolveConfig = field(default_factory=SolveConfig)
    execute: ExecuteConfig = field(default_factory=ExecuteConfig)
    push_to_hub: str | None = None                  # "user/name", or a local folder


def model_path(ref: str, cfg: SelfInstructConfig, log) -> str:
    """What `from_pretrained` loads for `ref` (a built entry such as tiny:teacher builds itself, once)."""
    from align.models import resolve_ref

    return resolve_ref(ref, cfg.tiny, log)


def generate_fn(run: RunDir, stage: str, m: ModelSpec, cfg: SelfInstructConfig):
    """evol's plain `generate` callable for model entry `m` (align.datagen: Ray actors, resumable shards)."""
    from align.datagen import text_fn

    return text_fn(m, model_path(m.ref, cfg, run.log), run, stage, cfg.ray_address, cfg.num_cpus)


def load_files(files: list, overrides: list[str] = ()) -> SelfInstructConfig:
    """The config from YAML files and overrides, with generator names and model entries checked."""
    from evol.self_instruct import question_generator, test_generator

    from align import generate
    from align.models import check_ref
    from align.templates import get_template

    cfg = load(SelfInstructConfig, files, overrides)
    question_generator(cfg.questions.generator), test_generator(cfg.tests.generator)   # unknown names fail now
    for section, gen in (("questions", cfg.questions), ("tests", cfg.tests)):
        if gen.generator == "model" and gen.model is None:
            raise ConfigError(f"{section}.generator is 'model' but {section}.model is not set")
    for where, m in (("questions.model", cfg.questions.model), ("tests.model", cfg.tests.model),
                     ("solve.model", cfg.solve.model)):
        if m is None:
            continue
        for what, check in (("ref", lambda: check_ref(m.ref)), ("template", lambda: get_template(m.template)),
                            ("backend", lambda: generate.check_backend(m.backend, m.options))):
            try:
                check()
            except (UnknownNameError, ValueError, TypeError) as e:
                raise ConfigError(f"{where}.{what}: {e}") from None
    return cfg


def load_config(args: argparse.Namespace) -> SelfInstructConfig:
    overrides = list(args.overrides) + ([f"ray_address={args.ray_address}"] if args.ray_address else [])
    if args.push_to_hub:
        overrides.append(f"push_to_hub={args.push_to_hub}")
    return load_files([cli.preset_path(args.base, "self_instruct"), *args.config], overrides)


def main(argv: list[str] | None = None) -> dict:
    p = cli.parser("self_instruct", __doc__)
    args = p.parse_args(argv)
    if args.stand_in:
        p.exit(2, "config error: --stand-in is not supported by the self-instruct job yet (the loop recipes have it)\n")
    try:
        cfg = load_config(args)
    except (ConfigError, UnknownNameError) as e:
        p.exit(2, f"config error: {e}\n")
    if args.dry_run:
        print(json.dumps(asdict(cfg), indent=1))
        return {}
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    run = RunDir(args.run_dir or Path("runs") / cfg.name)
    dump(cfg, run.path("config.yaml"))
    run.log(f"run directory: {run.root}")
    return run_job(cfg, run)


def run_job(cfg: SelfInstructConfig, run: RunDir) -> dict:
    from evol import dedup, self_instruct as si, verify
    from evol.seeds import load_source

    # 1. Questions, from the generator table (the task family, or a model from seed topics/problems).
    def questions() -> dict:
        q = cfg.questions
        gen = generate_fn(run, "questions-gen", q.model, cfg) if q.model else None
        seeds = load_source(q.seeds) if q.seeds else []
        topics = si.TOPICS if q.topics is None else q.topics
        out = si.question_generator(q.generator)(q.n, q.seed, gen, topics=topics, seeds=seeds,
                                                  per_prompt=q.per_prompt)
        write_jsonl(run.path("questions.jsonl"), out)
        return {"questions": len(out)}
    run.stage("questions", config=asdict(cfg.questions), inputs=[], outputs=["questions.jsonl"], fn=questions)

    # 2. Dedup (exact, MinHash near duplicates) and decontamination against benchmark test problems.
    def dedup_stage() -> dict:
        rows = si.read_questions(run.path("questions.jsonl"))
        kept, dropped, report = dedup.dedup_and_decontaminate(rows, cfg.dedup.decontaminate,
                                                              cfg.dedup.near_threshold)
        write_jsonl(run.path("deduped.jsonl"), kept)
        write_jsonl(run.path("dropped-dedup.jsonl"), dropped)
        write_atomic(run.path("decontamination.json"), json.dumps(report, indent=1))
        return {"kept": len(kept), "duplicates": report["exact_duplicates"] + report["near_duplicates"],
                "contaminated": report["removed"]}
    run.stage("dedup", config=asdict(cfg.dedup), inputs=[run.path("questions.jsonl")],
              outputs=["deduped.jsonl", "decontamination.json"], fn=dedup_stage)

    # 3. Unit tests per question; questions without enough usable asserts drop out.
    def tests() -> dict:
        t = cfg.tests
        gen = generate_fn(run, "tests-gen", t.model, cfg) if t.model else None
        kept, dropped = si.test_generator(t.generator)(si.read_questions(run.path("deduped.jsonl")), gen,
                                                      min_tests=t.min_tests)
        write_jsonl(run.path("with_tests.jsonl"), kept)
        write_jsonl(run.path("dropped-tests.jsonl"), dropped)
        return {"with_tests": len(kept), "dropped": len(dropped)}
    run.stage("tests", config=asdict(cfg.tests), inputs=[run.path("deduped.jsonl")],
              outputs=["with_tests.jsonl"], fn=tests)
    problems = {p.id: p for p in read_jsonl(run.path("with_tests.jsonl"), Problem)}

    # 4. N solutions per question from the solver (Ray actors, resumable shards).
    m = cfg.solve.model

    def solve() -> dict:
        import ray

        fanout.init_ray(cfg.ray_address, cfg.num_cpus)
        path = model_path(m.ref, cfg, run.log)
        actors = fanout.start_actors(stages.Sampler, (asdict(m), path, "teacher"), m.replicas,
                                     stages.actor_resources(m))
        try:
            out = run.sharded("solve", [asdict(p) for p in problems.values()], cfg.solve.shard_size, None,
                              run.fingerprint([asdict(m), path], [run.path("with_tests.jsonl")]),
                              executor=lambda _fn, shards: fanout.actor_map(actors, "sample", shards, fanout.Progress(
                                  sum(map(len, shards)), f"[solve] {m.ref}", "questions", run.log)))
        finally:
            for a in actors:
                ray.kill(a)
        write_jsonl(run.path("candidates.jsonl"), out)
        return {"candidates": len(out)}
    run.stage("solve", config=asdict(cfg.solve), inputs=[run.path("with_tests.jsonl")],
              outputs=["candidates.jsonl"], fn=solve)
    candidates = read_jsonl(run.path("candidates.jsonl"), Candidate)

    # 5. Run every solution against its question's tests in the sandbox (Ray tasks).
    def execute() -> dict:
        verdicts = stages.execute_candidates(run, cfg.execute, candidates, problems, [run.path("candidates.jsonl")],
                                             cfg.ray_address, cfg.num_cpus)
        write_jsonl(run.path("verdicts.jsonl"), verdicts)
        return {"verdicts": len(verdicts)}
    run.stage("execute", config=asdict(cfg.execute), inputs=[run.path("candidates.jsonl")],
              outputs=["verdicts.jsonl"], fn=execute)

    # 6. First passing solution = answer; its tests verified in the sandbox; datasets + funnel.
    def select() -> dict:
        from rank.sandbox import SandboxConfig

        status = {v.candidate_id: v.status for v in read_jsonl(run.path("verdicts.jsonl"), Verdict)}
        cands = [asdict(c) for c in candidates]
        chosen = si.first_passing(list(problems.values()), cands, status)
        runner = verify.sandbox_runner(SandboxConfig(workers=cfg.execute.workers, timeout_s=cfg.execute.timeout_s,
                                                     unsafe=cfg.execute.unsafe))
        checked = verify.verify([p for p, _, _ in chosen], [None] * len(chosen), runner, min_tests=cfg.tests.min_tests)
        kept = [(out, a, r) for out, (_, a, r) in zip(checked, chosen) if isinstance(out, Problem)]
        dropped = [{"id": p.id, "code": out.code, "detail": out.detail}
                   for out, (p, _, _) in zip(checked, chosen) if not isinstance(out, Problem)]
        sft, dpo = si.training_rows(kept, status)
        funnel = {"questions": sum(1 for _ in open(run.path("questions.jsonl"))),
                  "after_dedup": sum(1 for _ in open(run.path("deduped.jsonl"))),
                  "with_usable_tests": len(problems), "with_passing_solution": len(chosen),
                  "tests_verified": len(kept), "sft_rows": len(sft), "dpo_pairs": len(dpo),
                  "solutions_per_question": m.sample.n,
                  "dropped_at_verification": dict(sorted({d["code"]: sum(x["code"] == d["code"] for x in dropped)
                                                          for d in dropped}.items()))}
        write_jsonl(run.path("sft.jsonl"), sft)
        write_jsonl(run.path("dpo.jsonl"), dpo)
        write_jsonl(run.path("problems.jsonl"), [p for p, _, _ in kept])
        write_atomic(run.path("funnel.json"), json.dumps(funnel, indent=1))
        write_datasets(cfg, run, funnel, {"sft": sft, "dpo": dpo, "problems": [asdict(p) for p, _, _ in kept]})
        return funnel
    run.stage("select", config=[cfg.tests.min_tests, asdict(cfg.execute), cfg.name],
              inputs=[run.path("verdicts.jsonl")],
              outputs=["sft.jsonl", "dpo.jsonl", "funnel.json"],
              fn=select)
    funnel = json.loads(run.path("funnel.json").read_text())
    if cfg.push_to_hub:
        from align.publish import push_all
        push_all(run.path("datasets"), cfg.push_to_hub, run.log)
    print_funnel(funnel)
    skipped = [r.name for r in run.results if r.skipped]
    print(f"stages skipped: {', '.join(skipped) or 'none'}; datasets in {run.path('datasets')}")
    return funnel


def write_datasets(cfg: SelfInstructConfig, run: RunDir, funnel: dict, data: dict[str, list[dict]]) -> None:
    from align.config_loader import to_dict
    from align.publish import DatasetCard, write_dataset

    decon = json.loads(run.path("decontamination.json").read_text())
    what = {"sft": "prompt -> completion: the first solution that passed the question's tests",
            "dpo": "prompt, chosen (the answer) and rejected (a solution that failed the tests)",
            "problems": "the questions with their verified tests and the answer as reference"}
    for kind, rows in data.items():
        if not rows:
            run.log(f"datasets/{kind}: no rows, not written")
            continue
        card = DatasetCard(
            title=f"{cfg.name}: self-instruct {kind}",
            produced_by=f"python -m align.recipes.self_instruct --base {cfg.base}  (run directory {run.root})",
            description=f"Self-instruct for code after Code Llama §2.5 (arXiv:2308.12950). Rows: {what[kind]}.",
            config=to_dict(cfg), stats={"funnel": funnel, "code_llama_funnel": CODE_LLAMA_FUNNEL},
            decontamination=decon)
        write_dataset(run.path(f"datasets/{kind}"), {"train": rows}, card)


def print_funnel(f: dict) -> None:
    steps = [("questions", "questions"), ("after dedup", "after_dedup"), ("with usable tests", "with_usable_tests"),
             ("with a passing solution", "with_passing_solution"), ("tests verified (kept)", "tests_verified")]
    print(f"\n{'funnel':<26}{'this run':>10}{'Code Llama':>12}")
    for label, key in steps:
        ref = CODE_LLAMA_FUNNEL.get(key)
        print(f"{label:<26}{f[key]:>10}{(f'{ref:,}' if ref else '-'):>12}")
    print(f"SFT rows {f['sft_rows']}, DPO pairs {f['dpo_pairs']} ({f['solutions_per_question']} solutions per question)")


if __name__ == "__main__":
    main(sys.argv[1:])
