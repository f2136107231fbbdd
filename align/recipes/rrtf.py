"""RRTF: rank responses to align test & teacher feedback (PanGu-Coder2, arXiv:2307.14936).

    python -m align.recipes.rrtf --base tiny                 # the whole loop on CPU, minutes
    python -m align.recipes.rrtf --base starcoder-15b --dry-run
    python -m align.recipes.rrtf --base tiny evolve.rounds=2 train.args.learning_rate=1e-4

Reads top to bottom: models -> problems (seeds + Evol-Instruct) -> sample (teachers and
student, Ray actors) -> execute (sandbox, Ray tasks) -> rank -> train -> eval -> report.
Every stage is resumable (align.rundir); a rerun skips finished stages. The dpo and sft
recipes run this same script with another training method.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

from align import fanout, stages
from align.config import ConfigError, dump
from align.pipeline_config import RunConfig
from align.recipes import cli
from align.rundir import RunDir
from rank.plugins import UnknownNameError
from rank.records import Candidate, Problem, RankedGroup, Verdict, read_jsonl, write_jsonl


def resolve_models(cfg: RunConfig, log) -> dict[str, str]:
    """Map each model reference to what `from_pretrained` loads; builds the tiny models if asked."""
    from align.models import REGISTRY

    out: dict[str, str] = {}
    tiny = None
    for ref in [cfg.models.student, *cfg.models.teachers]:
        if ref.startswith("tiny:"):
            if tiny is None:
                from align.tiny import TinyConfig, build_tiny
                tiny = build_tiny(TinyConfig(**cfg.tiny), log=log)
            paths = {"tiny:student": tiny.student_path, "tiny:teacher": tiny.teacher_path}
            if ref not in paths:
                raise ConfigError(f"models: unknown tiny model {ref!r}; use one of {', '.join(paths)}")
            out[ref] = str(paths[ref])
        else:
            out[ref] = REGISTRY[ref].source if ref in REGISTRY else ref
    return out


def train_step(cfg: RunConfig, groups: list[RankedGroup], init: str, out_dir: Path) -> dict:
    """Build the method's training set from ranked groups and train `init` into out_dir
    (in this process, under torchrun, or as a Ray Train job: train.launcher)."""
    from align.train.datasets import build_rows
    from align.train.distributed import JobSpec, run_job, run_ray, run_torchrun

    rows = build_rows(cfg.train.dataset or cfg.method, groups, **cfg.train.dataset_args)
    if not rows:
        raise RuntimeError(f"no training rows for {cfg.method}: every group was dropped by the ranking "
                           f"strategy or the builder (see ranked.jsonl)")
    rows_path = out_dir.parent / f"{cfg.method}-rows.jsonl"
    write_jsonl(rows_path, rows)
    # TRL's configs extend TrainingArguments: args is shared, trl adds DPOConfig/SFTConfig fields.
    config = {**cfg.train.args, **cfg.train.trl}
    rank_method = cfg.method in ("rrtf", "rrhf")
    options = {"packing": cfg.train.layout} if rank_method else {}
    if not rank_method and cfg.train.layout != "auto":
        raise ValueError(f"train.layout={cfg.train.layout!r} applies to rrtf/rrhf only, not {cfg.method}")
    if cfg.train.model_init_kwargs:
        if rank_method:
            options["model_init_kwargs"] = cfg.train.model_init_kwargs
        else:
            config["model_init_kwargs"] = cfg.train.model_init_kwargs
    spec = JobSpec(method=cfg.method, model_path=init, rows_path=str(rows_path), output_dir=str(out_dir),
                   config=config, deepspeed=cfg.train.deepspeed, lora=cfg.train.lora, options=options,
                   loss={"loss": cfg.train.loss, **cfg.train.loss_args} if rank_method else {})
    launch = {"inprocess": lambda: run_job(spec),
              "torchrun": lambda: run_torchrun(spec, cfg.train.num_workers),
              "ray": lambda: run_ray(spec, cfg.train.num_workers, cfg.ray_address,
                                     use_gpu=cfg.train.num_gpus_per_node > 0 and cfg.base != "tiny")}
    metrics = launch[cfg.train.launcher]()
    return {"rows": len(rows), **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}


def evaluate_model(heldout: list[Problem], cfg: RunConfig, path: str) -> dict:
    """Greedy pass@1 of one model on the held-out problems, every program run in the sandbox."""
    from align.evaluate import evaluate
    from align.generate import SamplingParams, load_backend
    from rank.sandbox import SandboxConfig

    backend = load_backend(cfg.sample.backend, path, batch_size=cfg.sample.batch_size)
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=cfg.eval.max_new_tokens)
    sandbox = SandboxConfig(workers=cfg.execute.workers, timeout_s=cfg.execute.timeout_s,
                            unsafe=cfg.execute.unsafe)
    return evaluate(heldout, backend, params, sandbox, ks=(1,))


def main(argv: list[str] | None = None, method: str = "rrtf", doc: str = __doc__) -> dict:
    p = cli.parser(method, doc)
    args = p.parse_args(argv)
    try:
        cfg = cli.load_config(method, args)
    except (ConfigError, UnknownNameError) as e:
        p.exit(2, f"config error: {e}\n")
    if cfg.method != method:
        p.exit(2, f"config error: preset is for method {cfg.method!r}, this recipe runs {method!r}\n")
    if args.dry_run:
        from align.plan import describe
        print(describe(cfg))
        return {}
    # Per-file download/load bars drown the stage log; stage progress is logged instead.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    t_start = time.time()
    run = RunDir(args.run_dir or Path("runs") / cfg.name)
    log = run.log
    dump(cfg, run.path("config.yaml"))
    log(f"run directory: {run.root}")

    # 1. Models: registry names / hub ids / the embedded tiny models (built once, cached).
    models = resolve_models(cfg, log)
    student = models[cfg.models.student]
    teachers = [models[t] for t in cfg.models.teachers]

    # 2. Problems: seeds, Evol-Instruct rounds with lineage, held-out set for eval.
    def make_problems() -> dict:
        seeds = stages.load_seeds(cfg.data)
        problems, rejected = stages.evolve_problems(seeds, cfg.evolve)
        write_jsonl(run.path("problems.jsonl"), problems)
        write_jsonl(run.path("rejected.jsonl"), rejected)
        write_jsonl(run.path("heldout.jsonl"), stages.heldout_problems(cfg.data))
        return {"seeds": len(seeds), "problems": len(problems), "rejected": len(rejected)}
    run.stage("problems", config=[asdict(cfg.data), asdict(cfg.evolve)], inputs=[],
              outputs=["problems.jsonl", "heldout.jsonl", "rejected.jsonl"], fn=make_problems)
    problems = {p.id: p for p in read_jsonl(run.path("problems.jsonl"), Problem)}

    # 3. Sample k responses per problem from the student and every teacher (Ray actors).
    roles = [(cfg.models.student, student, "student", cfg.sample.student)]
    roles += [(ref, path, "teacher", cfg.sample.teacher) for ref, path in zip(cfg.models.teachers, teachers)]

    def sample() -> dict:
        import ray

        fanout.init_ray(cfg.ray_address, cfg.num_cpus)
        rows = [asdict(p) for p in problems.values()]
        out = []
        for ref, path, role, sp in roles:
            params = stages.sampling_params(sp)
            actors = [ray.remote(num_cpus=1)(stages.Sampler).remote(
                cfg.sample.backend, path, ref, role, params, cfg.sample.batch_size)
                for _ in range(cfg.sample.replicas)]
            fp = run.fingerprint([ref, path, role, params, cfg.sample.backend], [run.path("problems.jsonl")])
            out += run.sharded(f"sample-{role}-{ref.replace('/', '_').replace(':', '_')}", rows,
                               cfg.sample.shard_size, None, fp,
                               executor=lambda _fn, shards: fanout.actor_map(actors, "sample", shards))
            for a in actors:
                ray.kill(a)
        write_jsonl(run.path("candidates.jsonl"), out)
        return {"candidates": len(out)}
    run.stage("sample", config=[asdict(cfg.sample), models], inputs=[run.path("problems.jsonl")],
              outputs=["candidates.jsonl"], fn=sample)
    candidates = read_jsonl(run.path("candidates.jsonl"), Candidate)

    # 4. Execute every candidate's tests in the sandbox (Ray tasks, one sandbox per task).
    def execute() -> dict:
        fanout.init_ray(cfg.ray_address, cfg.num_cpus)
        rows = stages.execution_rows(candidates, problems)
        fp = run.fingerprint(asdict(cfg.execute), [run.path("candidates.jsonl")])
        fn = partial(stages.execute_shard, cfg=asdict(cfg.execute))
        verdicts = run.sharded("execute", rows, cfg.execute.shard_size, fn, fp,
                               # two sandbox workers per core keep a core busy (docs/sandbox.md)
                               executor=lambda f, shards: fanout.ray_map(f, shards, max(1, cfg.execute.workers // 2)))
        write_jsonl(run.path("verdicts.jsonl"), verdicts)
        return {"verdicts": len(verdicts)}
    run.stage("execute", config=asdict(cfg.execute), inputs=[run.path("candidates.jsonl")],
              outputs=["verdicts.jsonl"], fn=execute)
    verdicts = read_jsonl(run.path("verdicts.jsonl"), Verdict)

    # 5. Rank each problem's responses (PanGu-Coder2 rule by default).
    def rank() -> dict:
        groups = stages.rank_groups(problems, candidates, verdicts, cfg.rank.strategy)
        write_jsonl(run.path("ranked.jsonl"), groups)
        return {"groups": len(groups), "dropped": len(problems) - len(groups),
                "sampled": stages.verdict_summary(candidates, verdicts)}
    run.stage("rank", config=asdict(cfg.rank), inputs=[run.path("verdicts.jsonl")],
              outputs=["ranked.jsonl"], fn=rank)
    groups = read_jsonl(run.path("ranked.jsonl"), RankedGroup)

    # 6. Train the student with the method's loss (RRTF by default), or continue from another
    #    method's output in this run (train.init_from, e.g. SFT then DPO).
    init = student
    if cfg.train.init_from:
        init = str(run.path(f"train/{cfg.train.init_from}"))
        if not Path(init).exists():
            init = cfg.train.init_from
        if not Path(init).exists():
            raise SystemExit(f"train.init_from: {cfg.train.init_from!r} is neither a method trained in "
                             f"{run.root} nor a path")
    out_dir = run.path(f"train/{method}")
    run.stage(f"train-{method}", config=[cfg.method, asdict(cfg.train), init],
              inputs=[run.path("ranked.jsonl")], outputs=[f"train/{method}"],
              fn=lambda: train_step(cfg, groups, init, out_dir))

    # 7. Greedy pass@1 of the student before and after, and of the teacher: on the held-out problems,
    #    and on each benchmark in eval.benchmarks ("humaneval:PATH", "mbpp:PATH@test", a JSONL path).
    suites = {"heldout": (run.path("heldout.jsonl"), lambda: read_jsonl(run.path("heldout.jsonl"), Problem))}
    for spec in cfg.eval.benchmarks:
        from evol.seeds import load_seeds
        kind, _, rest = spec.partition(":")
        data = Path(rest.rpartition("@")[0] or rest) if rest else Path(spec)
        suites[kind if rest else data.stem] = (data, partial(load_seeds, spec))
    evals: dict = {}
    for suite, (data, load) in suites.items():
        for name, path, stage in [("student_before", student, "eval-student"), ("teacher", teachers[0], "eval-teacher"),
                                  ("student_after", str(out_dir), f"eval-{method}")]:
            stage = stage if suite == "heldout" else f"{stage}-{suite}"
            result_path = run.path(f"eval/{stage}.json")

            def evaluate(path=path, stage=stage, result_path=result_path, load=load) -> dict:
                res = evaluate_model(load(), cfg, path)
                write_jsonl(run.path(f"eval/{stage}.jsonl"), res.pop("per_problem"))
                result_path.write_text(json.dumps(res))
                return {"pass@1": res["pass@1"]}
            run.stage(stage, config=[path, cfg.eval.max_new_tokens, asdict(cfg.execute)],
                      inputs=[data] + ([out_dir] if name == "student_after" else []),
                      outputs=[f"eval/{stage}.json"], fn=evaluate)
            evals.setdefault(suite, {})[name] = json.loads(result_path.read_text())
    heldout_evals = evals.pop("heldout")

    # 8. Report: eval.json, report.md, a plot, and a table on stdout.
    result: dict = {k: {"pass@1": v["pass@1"], "n_problems": v["n_problems"]} for k, v in heldout_evals.items()}
    result["method"] = method
    result["benchmarks"] = {suite: {k: {"pass@1": v["pass@1"], "n_problems": v["n_problems"]} for k, v in e.items()}
                            for suite, e in evals.items()}
    run.path("eval.json").write_text(json.dumps(result, indent=1))
    stages.write_report(run.path("report.md"), cfg.name, heldout_evals, run.results,
                        {"method": method, "student": student, "teachers": teachers,
                         "benchmarks": result["benchmarks"], "total_seconds": round(time.time() - t_start, 1)})
    stages.plot_eval(run.path("eval.png"), heldout_evals)
    n_heldout = next(iter(heldout_evals.values()))["n_problems"]
    print(f"\n{'model':<16}held-out pass@1 ({n_heldout} problems)" + "".join(f"  {s}" for s in evals))
    for k, v in heldout_evals.items():
        print(f"{k:<16}{v['pass@1']:.3f}" + "".join(f"  {evals[s][k]['pass@1']:.3f}" for s in evals))
    skipped = [r.name for r in run.results if r.skipped]
    print(f"\nstages skipped: {', '.join(skipped) or 'none'}; total {time.time() - t_start:.0f}s; "
          f"artifacts in {run.root}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
