"""Sample any model on any problems, without the loop; and the public face of align.backends.

    python -m align.generate --model tiny-teacher-dir --backend hf --in problems.jsonl \\
        --out candidates.jsonl --n 4 --temperature 0.8 --template pangu
    python -m align.generate --model my-model --backend openai --base-url http://localhost:8000/v1 \\
        --no-api-key --in mbpp:mbpp.jsonl@test --out cands.jsonl --n 2 --template chat

A rerun skips problems whose n candidates are already in OUT (it appends the rest), and the
openai backend's response cache makes already-answered requests free.
Tests: `.venv/bin/python -m pytest tests/align/test_generate.py`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from align.backends import (BACKENDS, DEFAULT_STOP, Backend, BackendError, BackendOptionError,  # noqa: F401
                            BackendUnavailable, Prompt, SamplingParams, backend_resources, check_backend,
                            load_backend, truncate_at_stop)
from align.backends.hf import HFBackend  # noqa: F401
from rank.records import append_jsonl


def add_backend_args(ap: argparse.ArgumentParser) -> None:
    """--backend and its options, for every CLI that loads a model (this one, align.evaluate)."""
    ap.add_argument("--backend", default="hf", help=f"{', '.join(BACKENDS)} or package.module:Class")
    ap.add_argument("--base-url", help="openai backend: the server, e.g. http://localhost:8000/v1")
    ap.add_argument("--api-key-env", help="openai backend: the environment variable holding the key")
    ap.add_argument("--no-api-key", action="store_true", help="openai backend: a server without authentication")
    ap.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                    help="any other backend option, e.g. -o device=cuda -o dtype=bfloat16 -o max_concurrency=16")


def backend_options(a: argparse.Namespace) -> dict[str, Any]:
    """Backend options from --option KEY=VALUE (YAML values), --base-url and the API-key flags."""
    import yaml

    opts: dict[str, Any] = {}
    for item in a.option:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise BackendOptionError(f"--option {item!r}: expected KEY=VALUE")
        opts[key] = yaml.safe_load(value)
    if a.base_url:
        opts["base_url"] = a.base_url
    if a.no_api_key:
        opts["api_key_env"] = None
    elif a.api_key_env:
        opts["api_key_env"] = a.api_key_env
    return opts


def _resume(out: Path, n: int, params: dict[str, Any]) -> set[str]:
    """Problem ids that already have `n` candidates in OUT. A partial last line (a killed write) is
    cut off and the rows of problems with fewer than `n` candidates are dropped, so they are redone;
    rows sampled with other parameters are an error (nothing in OUT is overwritten)."""
    from rank.records import Candidate, cut_torn_tail, iter_jsonl, write_jsonl

    if not out.exists():
        return set()
    cut_torn_tail(out)
    rows = list(iter_jsonl(out, Candidate))
    other = next((r for r in rows if r.params != params), None)
    if other is not None:
        raise SystemExit(f"{out}: holds candidates sampled with {other.params}, not {params}; "
                         f"give another --out")
    count = Counter(r.problem_id for r in rows)
    done = {pid for pid, c in count.items() if c >= n}
    if len(done) < len(count):
        write_jsonl(out, [r for r in rows if r.problem_id in done])
    return done


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from align.fanout import Progress
    from align.models import resolve_ref
    from align.stages import Sampler
    from align.templates import get_template
    from evol.seeds import load_source

    ap = argparse.ArgumentParser(prog="python -m align.generate", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="registry name, hub id, local path, or the served model name")
    add_backend_args(ap)
    ap.add_argument("--in", dest="source", required=True,
                    help="problems: a Problem JSONL/Parquet file, humaneval[:PATH], mbpp:PATH[@split], hf:NAME[:SPLIT]")
    ap.add_argument("--out", required=True, type=Path, help="candidates JSONL (appended; a rerun resumes)")
    ap.add_argument("--limit", type=int, help="the first N problems")
    ap.add_argument("--n", type=int, default=1, help="samples per problem")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--template", default="pangu", help="pangu, alpaca, chat, completion or package.module:name")
    ap.add_argument("--role", default="teacher", choices=["teacher", "student"])
    ap.add_argument("--chunk", type=int, default=32, help="problems per backend call and per append to OUT")
    a = ap.parse_args(argv)

    sample = {"n": a.n, "temperature": a.temperature, "top_p": a.top_p, "max_new_tokens": a.max_new_tokens,
              "seed": a.seed}
    try:
        options = backend_options(a)
        check_backend(a.backend, options)
        get_template(a.template)
        SamplingParams(**sample)
    except (ValueError, KeyError) as e:
        ap.exit(2, f"error: {e}\n")
    problems = load_source(a.source, a.limit)
    done = _resume(a.out, a.n, {**sample, "template": a.template})
    todo = [p for p in problems if p.id not in done]
    log = lambda msg: print(msg, file=sys.stderr, flush=True)   # noqa: E731  (stdout is the summary)
    log(f"{len(problems)} problems, {len(problems) - len(todo)} already in {a.out}, {len(todo)} to sample")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    usage: dict[str, int] = {}
    if todo:
        spec = {"ref": a.model, "backend": a.backend, "template": a.template, "sample": sample, "options": options}
        sampler = Sampler(spec, resolve_ref(a.model, log=log), a.role)
        progress = Progress(len(todo), "sample", "problems", log)
        for start in range(0, len(todo), a.chunk):
            chunk = todo[start:start + a.chunk]
            rows = sampler.sample([dataclasses.asdict(p) for p in chunk])
            append_jsonl(a.out, rows)
            written += len(rows)
            progress.update(len(chunk))
        usage = dict(getattr(sampler.backend, "usage", {}))
    summary = {"problems": len(problems), "skipped": len(problems) - len(todo), "candidates_written": written,
               "out": str(a.out), "usage": usage}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
