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
    """Map each model reference to a loadable path or hub id; builds the tiny models if asked."""
    from align.models import resolve_path

    refs = [cfg.models.student, *cfg.models.teachers]
    tiny = None
    out = {}
    for ref in refs:
        if ref.startswith("tiny:"):
            if tiny is None:
                from align.tiny import TinyConfig, build_tiny
                tiny = build_tiny(TinyConfig(**cfg.tiny), log=log)
            out[ref] = {"tiny:student": tiny.student_path, "tiny:teacher": tiny.teacher_path}[ref]
        else:
            out[ref] = resolve_path(ref)
    return {k: str(v) for k, v in out.items()}


def train_step(cfg: RunConfig, groups: list[RankedGroup], student: str, out_dir: Path) -> dict:
    """Build the method's training set from ranked groups and train the student into out_dir."""
    from align.train.datasets import build_training_set
    from align.train.distributed import run_training

    rows = build_training_set(cfg.train.dataset or cfg.method, groups)
    if not rows:
        raise RuntimeError(f"no training rows for {cfg.method}: every group was dropped by the ranking "
                           f"strategy or the builder (see ranked.jsonl)")
    rows_path = out_dir.parent / f"{out_dir.name}-rows.jsonl"
    write_jsonl(rows_path, rows)
    spec = {"method": cfg.method, "model_path": student, "rows_path": str(rows_path),
            "output_dir": str(out_dir), "loss": cfg.train.loss, "loss_args": cfg.train.loss_args,
            "args": cfg.train.args, "trl": cfg.train.trl, "lora": cfg.train.lora,
            "deepspeed": cfg.train.deepspeed}
    metrics = run_training(spec, launcher=cfg.train.launcher, num_workers=cfg.train.num_workers,
                           ray_address=cfg.ray_address)
    return {"rows": len(rows), **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}


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
    fanout.init_ray(cfg.ray_address, cfg.num_cpus)
    roles = [(cfg.models.student, student, "student", cfg.sample.student)]
    roles += [(ref, path, "teacher", cfg.sample.teacher) for ref, path in zip(cfg.models.teachers, teachers)]

    def sample() -> dict:
        import ray

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
        rows = stages.execution_rows(candidates, problems)
        fp = run.fingerprint(asdict(cfg.execute), [run.path("candidates.jsonl")])
        fn = partial(stages.execute_shard, cfg=asdict(cfg.execute))
        verdicts = run.sharded("execute", rows, cfg.execute.shard_size, fn, fp,
                               executor=lambda f, shards: fanout.ray_map(f, shards, cfg.execute.workers))
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

    # 6. Train the student with the method's loss (RRTF by default).
    out_dir = run.path(f"train/{method}")
    run.stage(f"train-{method}", config=[cfg.method, asdict(cfg.train), student],
              inputs=[run.path("ranked.jsonl")], outputs=[f"train/{method}"],
              fn=lambda: train_step(cfg, groups, student, out_dir))

    # 7. Greedy pass@1 on held-out problems: student before and after, and the teacher.
    heldout = read_jsonl(run.path("heldout.jsonl"), Problem)
    evals: dict = {}

    def evaluate(name: str, path: str) -> dict:
        from align.evaluate import evaluate_model
        res = evaluate_model(heldout, cfg.sample.backend, path, cfg.eval.max_new_tokens,
                             asdict(cfg.execute))
        write_jsonl(run.path(f"eval/{name}.jsonl"), res.pop("per_problem", []))
        run.path(f"eval/{name}.json").write_text(json.dumps(res))
        return {"pass@1": res["pass@1"]}
    for name, path in [("student_before", student), ("teacher", teachers[0]), ("student_after", str(out_dir))]:
        key = f"eval-{name}" if name != "student_after" else f"eval-{method}"
        run.stage(key, config=[path, cfg.eval.max_new_tokens],
                  inputs=[run.path("heldout.jsonl")] + ([out_dir] if name == "student_after" else []),
                  outputs=[f"eval/{name}.json"] if name != "student_after" else [f"eval/{method}.json"],
                  fn=partial(evaluate, name if name != "student_after" else method, path))
        evals[name] = json.loads(run.path(f"eval/{name if name != 'student_after' else method}.json").read_text())

    # 8. Report: eval.json, report.md, a plot, and a table on stdout.
    result = {k: {"pass@1": v["pass@1"], "n": v.get("n_problems")} for k, v in evals.items()}
    result["method"] = method
    run.path("eval.json").write_text(json.dumps(result, indent=1))
    stages.write_report(run.path("report.md"), cfg.name, {k: evals[k] for k in evals}, run.results,
                        {"method": method, "student": student, "teachers": teachers,
                         "total_seconds": round(time.time() - t_start, 1)})
    stages.plot_eval(run.path("eval.png"), evals)
    print(f"\n{'model':<16}held-out pass@1 ({len(heldout)} problems)")
    for k, v in evals.items():
        print(f"{k:<16}{v['pass@1']:.3f}")
    skipped = [r.name for r in run.results if r.skipped]
    print(f"\nstages skipped: {', '.join(skipped) or 'none'}; total {time.time() - t_start:.0f}s; "
          f"artifacts in {run.root}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
