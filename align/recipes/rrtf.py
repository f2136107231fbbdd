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
from dataclasses import asdict, replace
from pathlib import Path

from align import fanout, report, stages
from align.config_loader import ConfigError, dump
from align.recipes.loop_config import ModelSpec, RunConfig
from align.recipes import cli
from align.rundir import RunDir
from align.templates import get_template
from align.train.launch import train_from_groups
from evol.seeds import load_source
from rank.plugins import UnknownNameError
from rank.records import Candidate, Problem, RankedGroup, Verdict, read_jsonl, write_atomic, write_jsonl


def resolve_models(cfg: RunConfig, log, stand_ins: dict | None = None) -> dict[str, str]:
    """Map each model reference to what `from_pretrained` loads (a built entry builds itself, once);
    `stand_ins` replaces some references' entries (--stand-in)."""
    from align.models import materialize, resolve_ref

    stand_ins = stand_ins or {}
    return {s.ref: materialize(stand_ins[s.ref], cfg.tiny, log) if s.ref in stand_ins
            else resolve_ref(s.ref, cfg.tiny, log) for s in [cfg.models.student, *cfg.models.teachers]}


def evaluate_model(problems: list[Problem], cfg: RunConfig, spec: ModelSpec, path: str) -> dict:
    """pass@k (greedy pass@1 by default) of one model on `problems` with the model's own backend and
    template; every program runs in the sandbox."""
    from align.evaluate import evaluate
    from align.generate import SamplingParams, load_backend
    from rank.sandbox import SandboxConfig

    backend = load_backend(spec.backend, path, **spec.options)
    params = SamplingParams(n=cfg.eval.n, temperature=cfg.eval.temperature if cfg.eval.n > 1 else 0.0,
                            max_new_tokens=cfg.eval.max_new_tokens)
    sandbox = SandboxConfig(workers=cfg.execute.workers, timeout_s=cfg.execute.timeout_s,
                            unsafe=cfg.execute.unsafe)
    return evaluate(problems, backend, params, sandbox, ks=cfg.eval.k, template=get_template(spec.template))


class _EvalActor:
    """One model's eval in its own Ray actor, placed where its backend's resources are (a GPU for
    vllm, or hf on cuda), so the driver needs no GPU and each engine's memory is freed when it ends."""

    def run(self, problems: list[Problem], cfg: RunConfig, spec: ModelSpec, path: str) -> dict:
        return evaluate_model(problems, cfg, spec, path)


def evaluate_in_actor(problems: list[Problem], cfg: RunConfig, spec: ModelSpec, path: str) -> dict:
    """`evaluate_model` in a fresh Ray actor with the backend's resources; the actor is killed after."""
    import ray

    fanout.init_ray(cfg.ray_address, cfg.num_cpus)
    (actor,) = fanout.start_actors(_EvalActor, (), 1, stages.actor_resources(spec))
    try:
        return ray.get(actor.run.remote(problems, cfg, spec, path))
    finally:
        ray.kill(actor)


def main(argv: list[str] | None = None, method: str = "rrtf", doc: str = __doc__) -> dict:
    p = cli.parser(method, doc)
    args = p.parse_args(argv)
    try:
        cfg = cli.load_config(method, args)
    except (ConfigError, UnknownNameError) as e:
        p.exit(2, f"config error: {e}\n")
    if cfg.method != method:
        p.exit(2, f"config error: preset is for method {cfg.method!r}, this recipe runs {method!r}\n")
    stand_ins: dict = {}
    if args.stand_in:
        from align import standin
        try:
            cfg, replaced, stand_ins = standin.apply(cfg)
        except ConfigError as e:
            p.exit(2, f"config error: {e}\n")
        print("--stand-in replaced:\n" + "".join(f"  {line}\n" for line in replaced))
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

    # 0. Benchmark problems, loaded first so that a missing or malformed benchmark fails before any
    #    sampling (eval.benchmarks; by default HumanEval and MBPP's test split for a registry base).
    suites = {"heldout": "heldout.jsonl"}
    for spec in stages.benchmarks(cfg):
        name = stages.suite_name(spec)
        suites[name] = f"benchmarks/{name}.jsonl"
        run.stage(f"benchmark-{name}", config=[spec, cfg.eval.limit], inputs=[], outputs=[suites[name]],
                  fn=lambda spec=spec, name=name: {"problems": write_jsonl(
                      run.path(suites[name]), load_source(spec, cfg.eval.limit))})

    # 1. Models: registry names / hub ids / paths; built entries (the tiny models) build once, cached.
    models = resolve_models(cfg, log, stand_ins)
    student = models[cfg.models.student.ref]
    teachers = [models[t.ref] for t in cfg.models.teachers]

    # 2. Problems: seeds, Evol-Instruct rounds with lineage (evolve.model for non-built-in problems),
    #    dedup and decontamination, held-out set for eval (align.datagen).
    from align.datagen import evolve_spec, problems_stage
    from align.models import resolve_ref

    evolver = evolve_spec(cfg)
    run.stage("problems", config=[asdict(cfg.data), asdict(cfg.evolve), asdict(cfg.execute),
                                  evolver and models.get(evolver.ref, evolver.ref)], inputs=[],
              outputs=["problems.jsonl", "heldout.jsonl", "rejected.jsonl", "decontamination.json",
                       "datasets/problems"],
              fn=lambda: problems_stage(cfg, run, lambda ref: models.get(ref) or resolve_ref(ref, cfg.tiny, log)))
    problems = {p.id: p for p in read_jsonl(run.path("problems.jsonl"), Problem)}

    # 3. Sample each model's responses with its own backend, template and sampling (Ray actors).
    roles = [(cfg.models.student, student, "student")] + [(t, teachers[i], "teacher")
                                                         for i, t in enumerate(cfg.models.teachers)]

    def sample(rd: RunDir, roles: list, extra: list[Candidate] = ()) -> dict:
        import ray

        fanout.init_ray(cfg.ray_address, cfg.num_cpus)
        rows = [asdict(p) for p in problems.values()]
        out, usage = [asdict(c) for c in extra], {}
        for spec, path, role in roles:
            # Restarted when its process dies; a shard whose actor is gone is re-run on another.
            # No more actors than shards: an idle replica would only hold resources.
            replicas = min(spec.replicas, max(1, -(-len(rows) // cfg.sample.shard_size)))
            actors = fanout.start_actors(stages.Sampler, (asdict(spec), path, role), replicas,
                                         stages.actor_resources(spec))
            fp = rd.fingerprint([asdict(spec), path, role], [run.path("problems.jsonl")])
            out += rd.sharded(f"sample-{role}-{spec.ref.replace('/', '_').replace(':', '_')}", rows,
                               cfg.sample.shard_size, None, fp,
                               executor=lambda _fn, shards: fanout.actor_map(actors, "sample", shards, fanout.Progress(
                                   sum(map(len, shards)), f"[sample] {role} {spec.ref}", "problems", log)))
            counts = ray.get([a.usage.remote() for a in actors])   # requests, tokens, cache hits, retries
            usage[spec.ref] = {k: sum(c.get(k, 0) for c in counts) for k in counts[0]} if counts else {}
            for a in actors:
                ray.kill(a)
        if cfg.sample.include_reference and not extra:
            out += [asdict(c) for c in stages.reference_candidates(problems.values())]
        write_jsonl(rd.path("candidates.jsonl"), out)
        return {"candidates": len(out), "usage": usage}
    run.stage("sample", config=[asdict(cfg.sample), [asdict(s) for s, _, _ in roles], models],
              inputs=[run.path("problems.jsonl")], outputs=["candidates.jsonl"], fn=lambda: sample(run, roles))
    candidates = read_jsonl(run.path("candidates.jsonl"), Candidate)

    # 4. Execute every candidate's tests in the sandbox (Ray tasks, one sandbox per task).
    def execute(rd: RunDir, candidates: list[Candidate], done: list[Verdict] = ()) -> dict:
        """Run the candidates without a verdict in `done` (earlier rounds' teachers) and write all verdicts."""
        have = {v.candidate_id for v in done}
        verdicts = [asdict(v) for v in done] + stages.execute_candidates(
            rd, cfg.execute, [c for c in candidates if c.id not in have], problems, [rd.path("candidates.jsonl")],
            cfg.ray_address, cfg.num_cpus)
        write_jsonl(rd.path("verdicts.jsonl"), verdicts)
        return {"verdicts": len(verdicts), "reused": len(done)}
    run.stage("execute", config=asdict(cfg.execute), inputs=[run.path("candidates.jsonl")],
              outputs=["verdicts.jsonl"], fn=lambda: execute(run, candidates))
    verdicts = read_jsonl(run.path("verdicts.jsonl"), Verdict)

    # 5. Rank each problem's responses (PanGu-Coder2 rule by default).
    def rank(rd: RunDir, candidates: list[Candidate], verdicts: list[Verdict]) -> dict:
        groups = stages.rank_groups(problems, candidates, verdicts, cfg.rank.strategy)
        write_jsonl(rd.path("ranked.jsonl"), groups)
        stats = {"groups": len(groups), "dropped": len(problems) - len(groups),
                 "sampled": stages.verdict_summary(candidates, verdicts)}
        if cfg.rank.strategies:   # the same verdicts under other rankers, and how much they agree
            stats["tau_mean"] = stages.rank_agreement(rd.root, problems, candidates, verdicts,
                                                      cfg.rank.strategy, groups, cfg.rank.strategies)
        return stats
    rank_outputs = ["ranked.jsonl"] + (["rank-agreement.json"] if cfg.rank.strategies else [])
    run.stage("rank", config=asdict(cfg.rank), inputs=[run.path("verdicts.jsonl")],
              outputs=rank_outputs, fn=lambda: rank(run, candidates, verdicts))
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
              fn=lambda: train_from_groups(cfg.train, method, groups, init, out_dir, cfg.ray_address,
                                           template=cfg.models.student.template, problems=problems))
    # The training rows as a dataset (Parquet + JSONL + card) that `datasets.load_dataset` opens.
    rows_file = run.path(f"train/{method}-rows.jsonl")
    if rows_file.exists():
        from align.datagen import publish_rows
        run.stage(f"dataset-{method}-rows", config=[cfg.name, method], inputs=[rows_file],
                  outputs=[f"datasets/{method}-rows"], fn=lambda: publish_rows(cfg, run, rows_file))

    # 6b. Iterative rounds (loop.rounds, default 1): round k samples the student trained in round k-1
    #     (under the name <ref>@round-k), keeps round 1's teacher samples and verdicts (the teachers
    #     stay), executes, ranks and trains again from round k-1's weights or the base student
    #     (loop.init). Round k's stages and artifacts live in round-<k>/ (round 1's in the run dir).
    trained = [out_dir]
    kept = [c for c in candidates if c.role != "student"]
    kept_verdicts = [v for v in verdicts if v.candidate_id in {c.id for c in kept}]
    for k in range(2, cfg.loop.rounds + 1):
        rd = RunDir(run.path(f"round-{k}"), log=log)
        prev = trained[-1]
        spec_k = replace(cfg.models.student, ref=f"{cfg.models.student.ref}@round-{k}")
        weights = run.model_fingerprint(prev)
        rd.stage("sample", config=[asdict(cfg.sample), asdict(spec_k), weights], inputs=[run.path("candidates.jsonl")],
                 outputs=["candidates.jsonl"], fn=lambda: sample(rd, [(spec_k, str(prev), "student")], kept))
        cands_k = read_jsonl(rd.path("candidates.jsonl"), Candidate)
        rd.stage("execute", config=asdict(cfg.execute), inputs=[rd.path("candidates.jsonl"), run.path("verdicts.jsonl")],
                 outputs=["verdicts.jsonl"], fn=lambda: execute(rd, cands_k, kept_verdicts))
        verdicts_k = read_jsonl(rd.path("verdicts.jsonl"), Verdict)
        rd.stage("rank", config=asdict(cfg.rank), inputs=[rd.path("verdicts.jsonl")],
                 outputs=rank_outputs, fn=lambda: rank(rd, cands_k, verdicts_k))
        groups_k = read_jsonl(rd.path("ranked.jsonl"), RankedGroup)
        init_k = str(prev) if cfg.loop.init == "trained" else student
        out_k = rd.path(f"train/{method}")
        rd.stage(f"train-{method}", config=[cfg.method, asdict(cfg.train), init_k,
                                            weights if cfg.loop.init == "trained" else None],
                 inputs=[rd.path("ranked.jsonl")], outputs=[f"train/{method}"],
                 fn=lambda: train_from_groups(cfg.train, method, groups_k, init_k, out_k, cfg.ray_address,
                                              template=cfg.models.student.template, problems=problems))
        run.results += [replace(r, name=f"round-{k}/{r.name}") for r in rd.results]
        trained.append(out_k)

    # 7. pass@1 of the student before and after, and of the first teacher, each with its own backend
    #    and template: on the held-out problems and on each benchmark (eval.benchmarks; by default
    #    HumanEval and MBPP's test split for a registry base).
    evals: dict = {}
    eval_stages: dict = {}     # suite -> model label -> stage (its artifacts eval/<stage>.json(l)): the report's input
    # With loop.rounds > 1, each earlier round's student too (student_round_<k>); student_after is the last.
    after = [(f"student_round_{k}", cfg.models.student, str(d), f"eval-{method}-round-{k}")
             for k, d in enumerate(trained[:-1], 1)]
    after.append(("student_after", cfg.models.student, str(trained[-1]), f"eval-{method}"))
    for suite, data in suites.items():
        for name, spec, path, stage in [
                ("student_before", cfg.models.student, student, "eval-student"),
                ("teacher", cfg.models.teachers[0], teachers[0], "eval-teacher"), *after]:
            stage = stage if suite == "heldout" else f"{stage}-{suite}"
            result_path = run.path(f"eval/{stage}.json")

            def evaluate(path=path, stage=stage, result_path=result_path, data=data, spec=spec) -> dict:
                res = evaluate_in_actor(read_jsonl(run.path(data), Problem), cfg, spec, path)
                write_jsonl(run.path(f"eval/{stage}.jsonl"), res.pop("per_problem"))
                write_atomic(result_path, json.dumps(res))
                return {k: v for k, v in res.items() if k.startswith("pass@")}
            # The trained model is fingerprinted by its final weights (cached hashes), not its checkpoints.
            weights = run.model_fingerprint(path) if name.startswith("student_") and name != "student_before" else None
            run.stage(stage, config=[path, asdict(spec), asdict(cfg.eval), asdict(cfg.execute), weights],
                      inputs=[run.path(data)],
                      outputs=[f"eval/{stage}.json"], fn=evaluate)
            evals.setdefault(suite, {})[name] = json.loads(result_path.read_text())
            eval_stages.setdefault(suite, {})[name] = stage
    heldout_evals = evals.pop("heldout")

    # 8. Report: eval.json, report.md with its figures (align.report), and a table on stdout.
    keep = lambda v: {k: x for k, x in v.items() if k.startswith("pass@") or k in ("n_problems", "n_samples")}  # noqa: E731
    result: dict = {k: keep(v) for k, v in heldout_evals.items()}
    result["method"] = method
    result["rounds"] = [{"round": k, **keep(heldout_evals[name])} for k, (name, *_) in enumerate(after, 1)]
    result["benchmarks"] = {suite: {k: keep(v) for k, v in e.items()} for suite, e in evals.items()}
    write_atomic(run.path("eval.json"), json.dumps(result, indent=1))
    print("\n" + report.write_report(run, title=cfg.name, method=method, evals=eval_stages, train_dir=trained[-1],
                                      models={"student": cfg.models.student.ref,
                                              "teachers": ", ".join(t.ref for t in cfg.models.teachers)},
                                      total_s=time.time() - t_start))
    skipped = [r.name for r in run.results if r.skipped]
    print(f"\nstages skipped: {', '.join(skipped) or 'none'}; total {time.time() - t_start:.0f}s; "
          f"artifacts in {run.root}")
    if args.push_to_hub:
        from align.publish import push_all
        push_all(run.path("datasets"), args.push_to_hub, log)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
