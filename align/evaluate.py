"""pass@k of a model on problems, with every program run in the sandbox.

    python -m align.evaluate MODEL_PATH humaneval --template completion --limit 20
    python -m align.evaluate MODEL_PATH mbpp:PATH/mbpp.jsonl --n 10 --temperature 0.8 --k 1 10

pass@k is the unbiased estimator of Chen et al. (arXiv:2107.03374, §2.1): sample n >= k
programs per problem, count the c that pass, and average 1 - C(n-c, k) / C(n, k) over problems.
With k = 1 and n = 1 the single sample is greedy (temperature 0), as PanGu-Coder2 reports pass@1.
Tests: `.venv/bin/python -m pytest tests/align/test_evaluate.py`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any, Sequence

from align.templates import generate as generate_texts, get_template
from rank.records import Problem, write_atomic


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k), as a stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:          # every k-subset holds a passing sample
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def evaluate(problems: Sequence[Problem], backend: Any, params: Any, sandbox_config: Any = None,
             ks: Sequence[int] = (1,), template: Any = None) -> dict[str, Any]:
    """Sample `params.n` programs per problem with `backend`, run their tests, report pass@k for each k.

    `template` (align.templates; default pangu) renders each prompt, sets the stop strings and
    extracts the program, by the same rule as the loop's sampling.

    Returns {"pass@k": mean over problems, ..., "n_problems", "n_samples", "params",
    "per_problem": [{"id", "n", "c", "pass@k", "samples": [{"status", "passed", "total", "code", "error"}]}]}.
    """
    from rank.sandbox import job_for, run_jobs

    if not problems:
        raise ValueError("evaluate() got no problems")
    ks = sorted(set(ks))
    if ks[0] < 1:
        raise ValueError(f"every k must be >= 1, got {ks}")
    if ks == [1] and params.n == 1:
        params = dataclasses.replace(params, temperature=0.0)   # greedy pass@1
    if params.n < ks[-1]:
        raise ValueError(f"pass@{ks[-1]} needs n >= {ks[-1]} samples per problem, got n={params.n}")

    template = template or get_template("pangu")
    outs = generate_texts(backend, template, list(problems), params)
    if len(outs) != len(problems) or any(len(o) != params.n for o in outs):
        raise RuntimeError(f"backend returned {[len(o) for o in outs]} completions for {len(problems)} "
                           f"problems x n={params.n}")
    codes = [[template.extract(p, t) for t in texts] for p, texts in zip(problems, outs)]
    jobs = [job_for(p, code, f"{i}:{j}") for i, p in enumerate(problems) for j, code in enumerate(codes[i])]
    verdicts = iter(run_jobs(jobs, sandbox_config))

    per_problem = []
    for i, p in enumerate(problems):
        vs = [next(verdicts) for _ in range(params.n)]
        c = sum(v.status == "passed" for v in vs)
        row: dict[str, Any] = {"id": p.id, "entry_point": p.entry_point, "n": params.n, "c": c}
        row.update({f"pass@{k}": pass_at_k(params.n, c, k) for k in ks})
        row["samples"] = [{"status": v.status, "passed": v.passed, "total": v.total, "code": code,
                           "error": v.error[:500]} for v, code in zip(vs, codes[i])]
        per_problem.append(row)
    result: dict[str, Any] = {f"pass@{k}": sum(r[f"pass@{k}"] for r in per_problem) / len(problems) for k in ks}
    # params.stop is replaced per problem by the template's stop set (align.templates.generate)
    result.update(n_problems=len(problems), n_samples=params.n, params=dataclasses.asdict(params),
                  template=template.name, per_problem=per_problem)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from align.generate import SamplingParams, add_backend_args, backend_options, load_backend
    from evol.seeds import SOURCES, load_source
    from rank.sandbox import SandboxConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="checkpoint path or hub id")
    ap.add_argument("data", help=SOURCES)
    add_backend_args(ap)
    ap.add_argument("--template", default="pangu", help="pangu | completion | alpaca | chat | package.module:name")
    ap.add_argument("--batch-size", type=int, default=None, help="hf backend: sequences per batch (-o batch_size=N)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--k", type=int, nargs="+", default=[1])
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--unsafe", action="store_true", help="run without bubblewrap (trusted code only)")
    ap.add_argument("--out", default=None, help="write the full result JSON here")
    a = ap.parse_args(argv)

    problems = load_source(a.data, a.limit)
    options = backend_options(a) | ({"batch_size": a.batch_size} if a.batch_size else {})
    backend = load_backend(a.backend, a.model, **options)
    params = SamplingParams(n=a.n, temperature=a.temperature, max_new_tokens=a.max_new_tokens)
    res = evaluate(problems, backend, params, SandboxConfig(workers=a.workers, unsafe=a.unsafe), ks=a.k,
                   template=get_template(a.template))
    if a.out:
        write_atomic(a.out, json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "per_problem"}))
    return res


if __name__ == "__main__":
    main()
