"""Compare training methods and variants on one run's sampled, executed and ranked data.

    python -m align.recipes.rrtf --base tiny                                   # populate runs/tiny first
    python -m align.recipes.compare --base tiny --methods sft,dpo,rrhf,rrtf --seeds 3
    python -m align.recipes.compare --base tiny --methods rrtf,sft --seeds 3 \\
        --variant rrtf/norank:train.loss_args.rank_weight=0 --variant codet:rank.strategy=codet
    python -m align.recipes.compare --base tiny --methods dpo --eval dev --tag dpo-sweep \\
        --variant ipo:train.trl.loss_type=ipo --variant lr1e-5:train.args.learning_rate=1e-5

Reads top to bottom: arms (each method's preset, plus each variant's overrides) -> the run's
problems, candidates and verdicts (never re-sampled; an arm whose data sections differ from the run's
is refused) -> ranked groups (the run's ranked.jsonl, or the same verdicts re-ranked when an arm
changes rank.strategy) -> one equal budget of optimizer steps for every arm -> train every arm x seed
(the loop's own align.train.launch.train_from_groups; resumable stages under <run>/compare/<tag>/; Ray
tasks with --parallel)
-> greedy pass@1 of each on the same evaluation set (the loop's evaluate_model) -> compare.json,
compare.md (table) and compare.png (means with 95% intervals, one dot per seed).

A variant is `[METHOD/]NAME:key=value[;key=value...]`: the overrides apply to every method (or only
to METHOD) and make the arm `METHOD/NAME`; repeat --variant with the same name to add overrides.
Intervals: Student's t over training seeds (arXiv-free textbook statistics; see `summarize`).
Test: `pytest tests/align/test_compare.py`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
from argparse import Namespace
from dataclasses import asdict, dataclass, field
from pathlib import Path

from align import stages
from align.config_loader import ConfigError, load
from align.recipes.loop_config import RunConfig
from align.recipes import cli
from align.rundir import RunDir
from rank.plugins import UnknownNameError
from rank.records import Candidate, Problem, RankedGroup, Verdict, read_jsonl, write_atomic, write_jsonl

# Sections that decide what was sampled and executed: an arm must share them with the run.
DATA_SECTIONS = ("models", "tiny", "data", "evolve", "sample", "execute")

# Two-sided 95% quantiles of Student's t, df = 1..30 (standard tables); beyond, the normal 1.96.
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042]


# ------------------------------------------------------------------ statistics

def t975(df: float) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (df rounded down, >= 1)."""
    d = max(1, int(df))
    return T975[d - 1] if d <= len(T975) else 1.96


def summarize(values: list[float], bounds: tuple[float, float] = (0.0, 1.0)) -> dict:
    """{"mean", "std" (sample, n-1), "ci95": [lo, hi]} of per-seed results: mean ± t(n-1) * std / sqrt(n),
    clipped to `bounds` (a pass rate lies in [0, 1]). One value has no spread to estimate: std and ci95
    are None (never a made-up width)."""
    n = len(values)
    if n == 0:
        raise ValueError("summarize() needs at least one value")
    mean = statistics.fmean(values)
    if n == 1:
        return {"mean": round(mean, 4), "std": None, "ci95": None}
    std = statistics.stdev(values)
    half = t975(n - 1) * std / math.sqrt(n)
    lo, hi = max(bounds[0], mean - half), min(bounds[1], mean + half)
    return {"mean": round(mean, 4), "std": round(std, 4), "ci95": [round(lo, 4), round(hi, 4)]}


def difference(a: list[float], b: list[float]) -> dict | None:
    """Welch's 95% interval of mean(a) - mean(b) (unequal variances, Welch-Satterthwaite df);
    None unless both have two or more values. `separated`: the interval excludes 0."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / ((va ** 2 / (len(a) - 1)) + (vb ** 2 / (len(b) - 1))) if se else len(a) + len(b) - 2
    lo, hi = diff - t975(df) * se, diff + t975(df) * se
    return {"diff": round(diff, 4), "ci95": [round(lo, 4), round(hi, 4)], "df": round(df, 1),
            "separated": lo > 0 or hi < 0}


def paired_difference(a: dict[int, float], b: dict[int, float]) -> dict | None:
    """The 95% interval of the mean per-seed difference a[s] - b[s] over the training seeds both arms ran
    (paired t, n-1 df): arms trained with the same seed share the initial weights and the sampler's data
    order, so their difference varies less than either arm. None with fewer than two shared seeds."""
    shared = sorted(set(a) & set(b))
    if len(shared) < 2:
        return None
    d = [a[s] - b[s] for s in shared]
    mean, half = statistics.fmean(d), t975(len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    return {"diff": round(mean, 4), "ci95": [round(mean - half, 4), round(mean + half, 4)], "n": len(d),
            "separated": mean - half > 0 or mean + half < 0}


# ------------------------------------------------------------------ arms

@dataclass
class Arm:
    name: str                                  # "rrtf" or "rrtf/norank"
    method: str
    overrides: list[str] = field(default_factory=list)


def parse_arms(methods: list[str], variants: list[str], base_arms: bool = True) -> list[Arm]:
    """One arm per method (unless `base_arms` is False) and one per (method, variant)."""
    specs: dict[tuple[str | None, str], list[str]] = {}
    for v in variants:
        head, sep, body = v.partition(":")
        scope, _, name = head.rpartition("/")
        if not sep or not name or not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
            raise ConfigError(f"--variant {v!r}: expected [METHOD/]NAME:key=value[;key=value...]")
        if scope and scope not in methods:
            raise ConfigError(f"--variant {v!r}: method {scope!r} is not in --methods ({','.join(methods)})")
        overrides = [o.strip() for o in body.split(";") if o.strip()]
        if not overrides or any("=" not in o for o in overrides):
            raise ConfigError(f"--variant {v!r}: every override is key=value")
        specs.setdefault((scope or None, name), []).extend(overrides)
    arms = [Arm(m, m) for m in methods] if base_arms else []
    for (scope, name), overrides in specs.items():
        arms += [Arm(f"{m}/{name}", m, overrides) for m in methods if scope in (None, m)]
    if not arms:
        raise ConfigError("nothing to compare: give --methods (and --variant)")
    return arms


def arm_config(arm: Arm, args: Namespace) -> RunConfig:
    ns = Namespace(base=args.base, config=args.config, overrides=[*args.overrides, *arm.overrides],
                   ray_address=None)
    return cli.load_config(arm.method, ns)


def check_same_data(arm: Arm, cfg: RunConfig, run_cfg: RunConfig) -> None:
    """Refuse an arm whose sampling or execution config differs from the run's: compare never re-samples."""
    for section in DATA_SECTIONS:
        mine, theirs = asdict(cfg)[section], asdict(run_cfg)[section]
        if mine != theirs:
            keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)) \
                if isinstance(mine, dict) else []
            raise ConfigError(f"arm {arm.name}: {section}.{keys[0] if keys else ''} differs from the run's "
                              f"config.yaml ({mine.get(keys[0]) if keys else mine!r} vs "
                              f"{theirs.get(keys[0]) if keys else theirs!r}); compare reuses the run's samples, "
                              f"run the loop with that config into another --run-dir instead")


def effective_batch(cfg: RunConfig) -> int:
    a = cfg.train.args
    return (int(a.get("per_device_train_batch_size", 8)) * int(a.get("gradient_accumulation_steps", 1))
            * max(1, cfg.train.num_workers))


def preset_steps(cfg: RunConfig, n_rows: int) -> int:
    """Optimizer steps the loop itself would take for `n_rows` rows with this config's schedule."""
    if int(cfg.train.args.get("max_steps", -1)) > 0:
        return int(cfg.train.args["max_steps"])
    epochs = float(cfg.train.args.get("num_train_epochs", 3.0))
    return max(1, math.ceil(math.ceil(n_rows / effective_batch(cfg)) * epochs))


def response_tokens(rows: list[dict], tokenizer) -> int:
    """Tokens of the responses a method's loss reads per pass over its rows (all k for rank rows,
    chosen + rejected for DPO, the completion for SFT)."""
    texts = [t for r in rows for t in (r.get("responses") or [r.get("chosen"), r.get("rejected"), r.get("completion")])
             if t]
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else 0


# ------------------------------------------------------------------ one job: train + eval

def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name.replace("/", "--"))


class NotFinished(Exception):
    """--collect: a stage that has not finished (with this config and inputs) is not run."""


def run_job(job: dict) -> dict | None:
    """Train one arm with one seed from the student, then greedy pass@1 on the evaluation set.
    Both are resumable stages of the run directory. Plain data in and out (a Ray task).
    With job["collect"], nothing runs: None unless both stages finished earlier."""
    from align.recipes.rrtf import evaluate_model
    from align.train.launch import train_from_groups

    run = RunDir(job["root"], log=lambda _msg: None) if job.get("collect") else RunDir(job["root"])
    cfg: RunConfig = job["cfg"]
    out = run.path(job["out"])

    def guarded(fn):
        def call():
            if job.get("collect"):
                raise NotFinished
            return fn()
        return call
    try:
        if job["train"]:
            groups = read_jsonl(job["groups"], RankedGroup)
            problems = {q.id: q for q in read_jsonl(run.path("problems.jsonl"), Problem)}
            run.stage(f"{job['stage']}-train", config=[cfg.method, asdict(cfg.train), job["init"]],
                      inputs=[job["groups"]], outputs=[job["out"]], fn=guarded(
                          lambda: train_from_groups(cfg.train, cfg.method, groups, job["init"], out, cfg.ray_address,
                                                    template=cfg.models.student.template, problems=problems)))
        return _evaluate(run, job, cfg, out, evaluate_model, guarded)
    except NotFinished:
        return None


def _evaluate(run: RunDir, job: dict, cfg: RunConfig, out: Path, evaluate_model, guarded) -> dict:
    model = str(out) if job["train"] else job["init"]
    spec = job["spec"]                            # the ModelSpec: backend, template, options
    result = run.path(f"{job['out']}.eval.json")

    def evaluate() -> dict:
        res = evaluate_model(read_jsonl(job["eval_file"], Problem), cfg, spec, model)
        write_jsonl(run.path(f"{job['out']}.eval.jsonl"), res.pop("per_problem"))
        write_atomic(result, json.dumps(res))
        return {"pass@1": res["pass@1"]}
    fp = run.model_fingerprint(model) if Path(model).is_dir() else model
    run.stage(f"{job['stage']}-eval", config=[fp, asdict(spec), asdict(cfg.eval), asdict(cfg.execute)],
              inputs=[job["eval_file"]], outputs=[str(result.relative_to(run.root))], fn=guarded(evaluate))
    res = json.loads(result.read_text())
    return {"arm": job["arm"], "seed": job["seed"], "pass@1": res["pass@1"], "n_problems": res["n_problems"]}


def run_jobs(jobs: list[dict], parallel: int, cfg: RunConfig) -> list[dict]:
    """Serially here, or `parallel` Ray tasks at a time (each asks for num_cpus / parallel CPUs)."""
    if parallel <= 1 or all(j.get("collect") for j in jobs):
        return [r for r in map(run_job, jobs) if r is not None]
    from align import fanout

    fanout.init_ray(cfg.ray_address, cfg.num_cpus)
    cpus = (cfg.num_cpus or os.cpu_count() or 1) / parallel
    out: list[dict] = []
    for _, res in fanout.ray_map(lambda js: [run_job(j) for j in js], [[j] for j in jobs], num_cpus=cpus):
        out += [r for r in res if r is not None]
    return out


# ------------------------------------------------------------------ evaluation set

def dev_problems(run_cfg: RunConfig, heldout: list[Problem], n: int) -> list[Problem]:
    """A tuning set: problems of the held-out split from another seed, none of them in the held-out set
    (tune on this, report on heldout). Only the built-in task family has a generator to draw from."""
    from evol import tasks

    if run_cfg.data.source != "tasks":
        raise ConfigError(f"--eval dev draws fresh built-in tasks; data.source is {run_cfg.data.source!r}: "
                          f"give --eval-file PATH (a Problem JSONL) instead")
    taken = {p.id for p in heldout}
    pool = tasks.generate_problems(n + len(taken), split="heldout", seed=run_cfg.data.seed + 1000,
                                   min_depth=run_cfg.data.min_depth, max_depth=run_cfg.data.max_depth)
    return [p for p in pool if p.id not in taken][:n]


# ------------------------------------------------------------------ report

def write_outputs(out: Path, report: dict) -> None:
    write_atomic(out / "compare.json", json.dumps(report, indent=1))
    write_atomic(out / "compare.md", markdown(report))
    plot(out / "compare.png", report)


def _fmt(x, digits=3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(report: dict) -> str:
    b, e = report["budget"], report["eval"]
    lines = [f"# Compare: {report['run']} ({e['set']}, {e['n_problems']} problems, greedy pass@1)", "",
             f"Held equal: {', '.join(b['held_equal'])}. Not equal: {', '.join(b['not_equal'])}.", "",
             "| arm | method | overrides | pass@1 per seed | mean | std | 95% interval | rows | response tokens seen |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, a in report["arms"].items():
        ci = f"[{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}]" if a["ci95"] else "-"
        lines.append(f"| {name} | {a['method']} | {'; '.join(a['overrides']) or '-'} | "
                     f"{' / '.join(f'{s:.3f}' for s in a['seeds'])} | {_fmt(a['mean'])} | {_fmt(a['std'])} | {ci} "
                     f"| {a['rows']} | {a['tokens_seen']} |")
    for name, r in report["reference"].items():
        lines.append(f"| {name} (untrained reference) | - | - | {r['pass@1']:.3f} | {r['pass@1']:.3f} | - | - | - | - |")
    if report.get("not_finished"):
        lines += ["", f"Not finished (left out): {', '.join(report['not_finished'])}."]
    if report["differences"]:
        lines += ["", f"Differences against {report['baseline']} (95% intervals; separated = excludes 0). Welch: "
                  "the two arms' seeds as independent samples; paired: per training seed (same initial weights "
                  "and data order), over the seeds both ran:", "",
                  "| arm | mean difference | Welch 95% interval | separated | paired 95% interval (seeds) | separated |",
                  "|---|---|---|---|---|---|"]
        for name, d in report["differences"].items():
            pd = report.get("paired", {}).get(name)
            paired = (f"[{pd['ci95'][0]:+.3f}, {pd['ci95'][1]:+.3f}] ({pd['n']}) | {'yes' if pd['separated'] else 'no'}"
                      if pd else "- | -")
            lines.append(f"| {name} | {d['diff']:+.3f} | [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] | "
                         f"{'yes' if d['separated'] else 'no'} | {paired} |")
    return "\n".join(lines) + "\n"


def plot(path: Path, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(report["arms"].items())
    fig, ax = plt.subplots(figsize=(1.2 * len(arms) + 2.5, 3.5))
    for i, (name, a) in enumerate(arms):
        ax.scatter([i] * len(a["seeds"]), a["seeds"], color="#999", s=12, zorder=2)
        err = None if a["ci95"] is None else [[a["mean"] - a["ci95"][0]], [a["ci95"][1] - a["mean"]]]
        ax.errorbar([i], [a["mean"]], yerr=err, fmt="o", color="#27c", capsize=5, zorder=3)
    for (name, r), style in zip(report["reference"].items(), (":", "--")):
        ax.axhline(r["pass@1"], color="#555", linestyle=style, linewidth=1, label=f"{name} {r['pass@1']:.2f}")
    ax.set_xticks(range(len(arms)), [n for n, _ in arms], rotation=20, ha="right")
    ax.set_ylabel(f"{report['eval']['set']} pass@1 (95% CI)")
    ax.set_ylim(0, 1)
    if report["reference"]:
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------ main

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m align.recipes.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="tiny", help="preset family (recipes/<base>/<method>.yaml)")
    p.add_argument("--methods", default="sft,dpo,rrhf,rrtf", help="comma-separated methods (presets)")
    p.add_argument("--variant", action="append", default=[], metavar="[METHOD/]NAME:k=v[;k=v]")
    p.add_argument("--no-base-arms", action="store_true", help="train only the variants, not the plain presets")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per arm (0..N-1)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps for every arm (default: what the rrtf preset takes on this run)")
    p.add_argument("--eval", default="heldout", choices=("heldout", "dev"),
                   help="heldout: the run's held-out set (report this); dev: a disjoint set to tune on")
    p.add_argument("--eval-file", default=None, help="a Problem JSONL to evaluate on instead")
    p.add_argument("--dev-size", type=int, default=200)
    p.add_argument("--baseline", default=None, help="arm the others are differenced against (default: sft if run)")
    p.add_argument("--references", default="student,teacher",
                   help="untrained models evaluated on the same set (comma-separated; '' for none)")
    p.add_argument("--parallel", type=int, default=1, help="trainings at once as Ray tasks (1: serial here)")
    p.add_argument("--collect", action="store_true",
                   help="run nothing: report the arm x seed results that finished earlier (a comparison cut short)")
    p.add_argument("--tag", default="compare", help="results go to <run>/compare/<tag>/")
    p.add_argument("--config", action="append", default=[], metavar="YAML", help="extra YAML layered on every preset")
    p.add_argument("--run-dir", default=None, help="the populated run directory (default: runs/<name>)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="applied to every arm")
    return p


def main(argv: list[str] | None = None) -> dict:
    p = parser()
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    # 1. Arms: each method's preset, and each variant on top of it.
    try:
        arms = parse_arms([m.strip() for m in args.methods.split(",") if m.strip()], args.variant,
                          not args.no_base_arms)
        configs = {a.name: arm_config(a, args) for a in arms}
    except (ConfigError, UnknownNameError) as e:
        p.exit(2, f"config error: {e}\n")
    first = next(iter(configs.values()))
    run = RunDir(args.run_dir or Path("runs") / first.name)
    missing = [f for f in ("config.yaml", "problems.jsonl", "heldout.jsonl", "candidates.jsonl",
                           "verdicts.jsonl", "ranked.jsonl") if not run.path(f).exists()]
    if missing:
        p.exit(2, f"{run.root} lacks {', '.join(missing)}: run the loop first "
                  f"(python -m align.recipes.rrtf --base {args.base}), then compare reuses its stages\n")
    run_cfg = load(RunConfig, [run.path("config.yaml")], [])
    try:
        for a in arms:
            check_same_data(a, configs[a.name], run_cfg)
    except ConfigError as e:
        p.exit(2, f"config error: {e}\n")
    out = run.path(f"compare/{slug(args.tag)}")
    out.mkdir(parents=True, exist_ok=True)
    log = run.log

    # 2. The run's records (never re-sampled) and each arm's ranking.
    problems = {q.id: q for q in read_jsonl(run.path("problems.jsonl"), Problem)}
    candidates = read_jsonl(run.path("candidates.jsonl"), Candidate)
    verdicts = read_jsonl(run.path("verdicts.jsonl"), Verdict)
    ranked = read_jsonl(run.path("ranked.jsonl"), RankedGroup)
    group_files: dict[str, Path] = {}
    if ranked:
        group_files[ranked[0].strategy] = run.path("ranked.jsonl")
    for cfg in configs.values():
        s = cfg.rank.strategy
        if s not in group_files:
            group_files[s] = out / f"ranked-{slug(s)}.jsonl"
            write_jsonl(group_files[s], stages.rank_groups(problems, candidates, verdicts, s))
            log(f"re-ranked the run's verdicts with {s!r}")

    # 3. The evaluation set: the run's held-out problems, a disjoint dev set, or a file.
    heldout = read_jsonl(run.path("heldout.jsonl"), Problem)
    if args.eval_file:
        eval_file, eval_name = Path(args.eval_file), Path(args.eval_file).stem
        read_jsonl(eval_file, Problem)        # validate before any training
    elif args.eval == "dev":
        eval_file, eval_name = out / "dev.jsonl", "dev"
        try:
            write_jsonl(eval_file, dev_problems(run_cfg, heldout, args.dev_size))
        except ConfigError as e:
            p.exit(2, f"config error: {e}\n")
    else:
        eval_file, eval_name = run.path("heldout.jsonl"), "heldout"
    n_eval = len(read_jsonl(eval_file, Problem))

    # 4. One budget of optimizer steps for every arm, and what each arm's rows are.
    from align.recipes.rrtf import resolve_models
    from align.train.launch import training_rows

    models = resolve_models(first, log)
    student = models[first.models.student.ref]
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(student)
    rows, tokens = {}, {}
    for a in arms:
        cfg = configs[a.name]
        groups = read_jsonl(group_files[cfg.rank.strategy], RankedGroup)
        rows[a.name] = training_rows(cfg.train, cfg.method, groups, cfg.models.student.template, problems, student)
        if not rows[a.name]:
            p.exit(2, f"arm {a.name}: no training rows from {group_files[cfg.rank.strategy].name}\n")
        tokens[a.name] = response_tokens(rows[a.name], tokenizer)
    budget_arm = next((a for a in arms if a.method == "rrtf"), arms[0])
    steps = args.steps or preset_steps(configs[budget_arm.name], len(rows[budget_arm.name]))
    batches = {effective_batch(c) for c in configs.values()}
    log(f"{len(arms)} arms x {args.seeds} seeds, {steps} optimizer steps each, eval on {n_eval} {eval_name} problems")

    # 5. Train every arm x seed and evaluate each on the same set (resumable stages).
    jobs = []   # seed-major: stopped early, every arm still has its first seeds
    for seed in range(args.seeds):
        for a in arms:
            cfg = arm_config(a, Namespace(**{**vars(args), "overrides": [
                *args.overrides, f"train.args.max_steps={steps}", f"train.args.seed={seed}"]}))
            jobs.append({"root": str(run.root), "cfg": cfg, "arm": a.name, "seed": seed, "train": True,
                         "init": student, "spec": cfg.models.student, "groups": str(group_files[cfg.rank.strategy]),
                         "out": f"compare/{slug(args.tag)}/{slug(a.name)}/seed-{seed}",
                         "stage": f"compare-{slug(args.tag)}-{slug(a.name)}-s{seed}", "eval_file": str(eval_file),
                         "collect": args.collect})
    references = [r for r in args.references.split(",") if r]
    for ref in reversed(references):       # first: cheap, and a comparison without its baseline is no use
        spec = {"student": first.models.student, "teacher": first.models.teachers[0]}.get(ref)
        if spec is None:
            p.exit(2, f"--references: {ref!r} is not one of student, teacher\n")
        jobs.insert(0, {"root": str(run.root), "cfg": first, "arm": ref, "seed": None, "train": False,
                     "init": models[spec.ref], "spec": spec,
                     "out": f"compare/{slug(args.tag)}/{ref}", "stage": f"compare-{slug(args.tag)}-{ref}",
                     "eval_file": str(eval_file), "collect": args.collect})
    results = run_jobs(jobs, args.parallel, first)

    # 6. Aggregate: per arm every seed's pass@1, mean, std, 95% interval; differences to a baseline.
    per_arm: dict[str, list[float]] = {}
    seed_ids: dict[str, list[int]] = {}
    for r in sorted(results, key=lambda r: (r["seed"] is None, r["seed"] or 0)):
        per_arm.setdefault(r["arm"], []).append(r["pass@1"])
        seed_ids.setdefault(r["arm"], []).append(r["seed"])
    missing = [j["arm"] + ("" if j["seed"] is None else f" seed {j['seed']}") for j in jobs
               if j["seed"] not in seed_ids.get(j["arm"], [])]
    if missing:
        log(f"not finished, left out: {', '.join(missing)}")
    report = {"run": str(run.root), "eval": {"set": eval_name, "file": str(eval_file), "n_problems": n_eval},
              "budget": {"optimizer_steps": steps, "prompts_per_step": sorted(batches),
                         "held_equal": [f"optimizer steps ({steps})",
                                        f"prompts per step ({'/'.join(map(str, sorted(batches)))})",
                                        "initial weights (the student)", "sampled data (the run's)"],
                         "not_equal": ["response tokens seen (shown: a rank row holds every response of a prompt, "
                                       "a DPO row two, an SFT row one)"]},
              "arms": {}, "reference": {}, "differences": {}, "paired": {}, "not_finished": missing}
    for a in arms:
        if a.name not in per_arm:
            continue
        cfg = configs[a.name]
        seeds = per_arm[a.name]
        passes = steps * effective_batch(cfg) / len(rows[a.name])
        report["arms"][a.name] = {"method": a.method, "overrides": a.overrides, "seeds": seeds,
                                  "seed_ids": seed_ids[a.name], **summarize(seeds),
                                  "n_problems": n_eval, "rows": len(rows[a.name]),
                                  "epochs": round(passes, 2), "tokens_seen": round(tokens[a.name] * passes),
                                  "strategy": cfg.rank.strategy}
    for ref in references:
        if ref in per_arm:
            report["reference"][ref] = {"pass@1": per_arm[ref][0], "n_problems": n_eval}
    baseline = args.baseline or ("sft" if "sft" in report["arms"] else None)
    if baseline and baseline not in report["arms"]:
        p.exit(2, f"--baseline {baseline!r} is not an arm ({', '.join(report['arms'])})\n")
    report["baseline"] = baseline
    if baseline:
        for name, a in report["arms"].items():
            base = report["arms"][baseline]
            d = difference(a["seeds"], base["seeds"]) if name != baseline else None
            if d:
                report["differences"][name] = d
                pd = paired_difference(dict(zip(a["seed_ids"], a["seeds"])), dict(zip(base["seed_ids"], base["seeds"])))
                if pd:
                    report["paired"][name] = pd
    write_outputs(out, report)
    print("\n" + markdown(report))
    print(f"artifacts in {out}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
