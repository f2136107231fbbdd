"""The `openai` backend against a real OpenAI-compatible server (`transformers serve`, started by
tests/conftest.py) and through a fault-injecting HTTP proxy in front of it.
Run: .venv/bin/python -m pytest tests/align/test_openai_backend.py"""
from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest

from align.generate import BackendError, SamplingParams, load_backend

pytest.importorskip("openai", reason="the openai client is the `api` extra")

PROMPTS = ["def add(a, b):", '"""\nReturn the largest element of xs.\n"""\ndef biggest(xs):',
           '"""\nCount the even numbers in xs.\n"""\n', "import math\n", "def rev(xs):"]
CHATS = [[{"role": "user", "content": "Write a function that adds two numbers."}],
         [{"role": "user", "content": "Reverse a list."}]]


class FaultProxy:
    """A real HTTP proxy on localhost that forwards POSTs to `upstream`, injecting one fault on the
    first attempt of each request kind in `faults` order: "429", "500", "drop" (close without an
    answer), "slow" (wait past the client's timeout, then close), "garbage" (200 with a body that is
    no completion). `answered` counts what reached the real server, per (prompt, seed)."""

    def __init__(self, upstream: str, faults: list[str | None], always: set[str] = frozenset(), delay_s: float = 0):
        self.upstream, self.faults, self.always, self.delay_s = urlparse(upstream), faults, always, delay_s
        self.answered: Counter = Counter()
        self.attempts: Counter = Counter()
        self.auth: set[str] = set()
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                req = json.loads(body)
                key = (json.dumps(req.get("prompt", req.get("messages"))), req.get("seed"))
                with proxy.lock:
                    proxy.attempts[key] += 1
                    proxy.bodies.append(req)
                    proxy.auth.add(self.headers.get("Authorization", ""))
                    first = proxy.attempts[key] == 1
                    fault = proxy.faults[len(proxy.answered) % len(proxy.faults)] if first else None
                    fault = next((f for f in proxy.always if f in json.dumps(req)), fault)
                if fault in ("429", "500"):
                    self._send(int(fault), b'{"error": {"message": "injected"}}', {"retry-after-ms": "20"})
                elif fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                elif fault == "slow":
                    time.sleep(proxy.delay_s)
                    self.close_connection = True
                    self.connection.shutdown(2)
                elif fault is not None:   # "garbage", or an `always` marker: a 200 that is no completion
                    self._send(200, b'{"object": "nonsense"}')
                else:
                    conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=120)
                    conn.request("POST", self.path, body, {"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    data = resp.read()
                    if resp.status == 200:
                        with proxy.lock:
                            proxy.answered[key] += 1
                    self._send(resp.status, data)

            def _send(self, status, data, headers=None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}{self.upstream.path}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy_factory(openai_server):
    made = []

    def make(faults, **kw):
        made.append(FaultProxy(openai_server.base_url, faults, **kw))
        return made[-1]
    yield make
    for p in made:
        p.close()


def backend_for(server_or_proxy, model, cache_dir, **kw):
    opts = dict(base_url=server_or_proxy.base_url, api_key_env=None, cache_dir=str(cache_dir), max_concurrency=4)
    return load_backend("openai", model, **{**opts, **kw})


@pytest.mark.slow
def test_real_server_completions_chat_cache_and_greedy_equals_hf(openai_server, served_model_dir, tmp_path):
    b = backend_for(openai_server, openai_server.model, tmp_path)
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=24, seed=5)
    got = b.generate(PROMPTS + CHATS, params)
    assert [len(o) for o in got] == [3] * (len(PROMPTS) + len(CHATS))
    assert all(isinstance(t, str) for o in got for t in o)
    assert any(len(set(o)) > 1 for o in got)       # per-sample seeds: the n samples differ
    n_req = 3 * (len(PROMPTS) + len(CHATS))
    assert b.usage["requests"] == n_req and b.usage["completion_tokens"] > 0 and b.usage["prompt_tokens"] > 0
    assert b.usage["retries"] == 0 and b.usage["cache_hits"] == 0

    again = backend_for(openai_server, openai_server.model, tmp_path)       # a rerun: zero requests
    assert again.generate(PROMPTS + CHATS, params) == got
    assert again.usage["requests"] == 0 and again.usage["cache_hits"] == n_req

    # Greedy through the server equals greedy in process: same model, same decoding. (No stop strings:
    # `transformers serve` also matches them across the prompt's end, e.g. "\ndef" when the prompt
    # ends in a newline and the completion starts with "def"; this backend cuts only the new text.)
    greedy = SamplingParams(n=2, temperature=0, max_new_tokens=24, stop=[])
    served = b.generate(PROMPTS, greedy)
    local = load_backend("hf", str(served_model_dir), device="cpu").generate(PROMPTS, greedy)
    assert served == local
    assert all(o[0] == o[1] for o in served)


@pytest.mark.slow
def test_faults_every_prompt_answered_exactly_once_and_rerun_is_free(openai_server, proxy_factory, tmp_path):
    proxy = proxy_factory(["429", "500", "drop", "slow", None], delay_s=2.5)
    b = backend_for(proxy, openai_server.model, tmp_path, timeout_s=1.5, max_retries=4)
    params = SamplingParams(n=2, temperature=0.8, max_new_tokens=16, seed=1)
    got = b.generate(PROMPTS, params)
    assert [len(o) for o in got] == [2] * len(PROMPTS)
    keys = {(json.dumps(p), params.seed + j) for p in PROMPTS for j in range(2)}
    assert set(proxy.answered) == keys and set(proxy.answered.values()) == {1}   # exactly once each
    assert sum(proxy.attempts.values()) - len(keys) == b.usage["retries"] > 0     # faults were retried
    assert b.usage["requests"] == len(keys) and len(b.cache) == len(keys)

    rerun = backend_for(proxy, openai_server.model, tmp_path, timeout_s=1.5)
    before = sum(proxy.attempts.values())
    assert rerun.generate(PROMPTS, params) == got
    assert sum(proxy.attempts.values()) == before and rerun.usage["requests"] == 0


@pytest.mark.slow
def test_extra_body_is_sent_and_keys_the_cache(openai_server, proxy_factory, tmp_path):
    proxy = proxy_factory([None])
    params = SamplingParams(n=1, temperature=0, max_new_tokens=4)
    plain = backend_for(proxy, openai_server.model, tmp_path)
    plain.generate(PROMPTS[:1], params)
    extra = backend_for(proxy, openai_server.model, tmp_path, extra_body={"frequency_penalty": 0.0})
    extra.generate(PROMPTS[:1], params)
    assert extra.usage["requests"] == 1 and extra.usage["cache_hits"] == 0   # another answer, not the cached one
    assert "frequency_penalty" not in proxy.bodies[0] and proxy.bodies[1]["frequency_penalty"] == 0.0


@pytest.mark.slow
def test_malformed_answer_is_an_error_and_keeps_what_was_sampled(openai_server, proxy_factory, tmp_path):
    bad = proxy_factory([None], always={"biggest"})   # every request for this prompt gets a non-completion
    b = backend_for(bad, openai_server.model, tmp_path, max_concurrency=1)
    params = SamplingParams(n=1, temperature=0, max_new_tokens=8)
    with pytest.raises(BackendError, match="malformed answer .* no choices"):
        b.generate(PROMPTS, params)
    kept = len(b.cache)
    assert kept >= 1                                  # answers that arrived before the error are cached
    fixed = proxy_factory([None])
    resumed = backend_for(fixed, openai_server.model, tmp_path)
    assert len(resumed.generate(PROMPTS, params)) == len(PROMPTS)
    assert resumed.usage["requests"] == len(PROMPTS) - kept and resumed.usage["cache_hits"] == kept


@pytest.mark.slow
def test_api_key_is_sent_but_never_written(openai_server, proxy_factory, tmp_path, monkeypatch, capfd, caplog):
    import logging

    caplog.set_level(logging.DEBUG)                   # the openai client's own debug log too
    secret = "sk-test-DO-NOT-WRITE-0123456789"
    monkeypatch.setenv("MY_TEACHER_KEY", secret)
    proxy = proxy_factory(["500", None])
    b = backend_for(proxy, openai_server.model, tmp_path / "cache", api_key_env="MY_TEACHER_KEY")
    b.generate(PROMPTS[:2], SamplingParams(n=1, max_new_tokens=8))
    assert proxy.auth == {f"Bearer {secret}"}         # it was used ...
    assert secret not in repr(vars(b.options))

    from align.generate import main          # the sampling CLI, as a user runs it
    from evol.tasks import generate_problems
    from rank.records import write_jsonl

    write_jsonl(tmp_path / "problems.jsonl", generate_problems(3, seed=0))
    args = ["--model", openai_server.model, "--backend", "openai", "--base-url", proxy.base_url,
            "--api-key-env", "MY_TEACHER_KEY", "-o", f"cache_dir={tmp_path / 'cache'}", "-o", "max_concurrency=2",
            "--in", str(tmp_path / "problems.jsonl"), "--out", str(tmp_path / "out" / "cands.jsonl"),
            "--n", "2", "--max-new-tokens", "8"]
    assert main(args)["usage"]["requests"] == 6
    assert main(args)["candidates_written"] == 0     # a rerun: nothing to do
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written
    for path in written:                              # ... and written nowhere
        assert secret.encode() not in path.read_bytes(), path
    captured = capfd.readouterr()
    assert secret not in captured.out + captured.err + caplog.text


def test_missing_key_variable_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(BackendError, match="NO_SUCH_KEY_VAR .*not set"):
        load_backend("openai", "m", api_key_env="NO_SUCH_KEY_VAR", cache_dir=str(tmp_path))


def test_unreachable_server_fails_after_retries(tmp_path):
    import socket

    with socket.socket() as s:          # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = load_backend("openai", "m", base_url=f"http://127.0.0.1:{port}/v1", api_key_env=None,
                     cache_dir=str(tmp_path), max_retries=2, timeout_s=2)
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=f"cannot reach http://127.0.0.1:{port}/v1 .*after 2 retries"):
        b.generate(["x"], SamplingParams(n=1, max_new_tokens=4))
    assert b.usage["retries"] == 2 and b.usage["requests"] == 0
    assert time.monotonic() - t0 >= 0.5 * 0.75 + 1.0 * 0.75      # backoff 0.5 s then 1 s, less jitter


def test_option_validation_names_the_option_and_valid_ones(tmp_path):
    from align.generate import BackendOptionError, check_backend

    with pytest.raises(BackendOptionError, match="unknown option 'max_concurency' .*did you mean 'max_concurrency'"):
        check_backend("openai", {"max_concurency": 4})
    with pytest.raises(BackendOptionError, match="max_concurrency must be >= 1"):
        check_backend("openai", {"max_concurrency": 0})
    with pytest.raises(BackendOptionError, match="base_url must start with http"):
        check_backend("openai", {"base_url": "localhost:8000"})
    with pytest.raises(BackendOptionError, match="requests_per_minute"):
        check_backend("openai", {"requests_per_minute": -1})


def test_rate_limiter_spaces_requests_and_tokens():
    from align.backends.openai_api import RateLimiter

    rl = RateLimiter(requests_per_minute=120, tokens_per_minute=None)   # bucket holds 120, refills 2/s
    t0 = time.monotonic()
    for _ in range(121):
        rl.acquire(0)
    assert 0.4 <= time.monotonic() - t0 < 2          # the 121st waited for a refill (~0.5 s)
    tl = RateLimiter(requests_per_minute=None, tokens_per_minute=6000)  # 100 tokens/s
    t0 = time.monotonic()
    tl.acquire(6000)
    tl.acquire(50)
    assert 0.4 <= time.monotonic() - t0 < 2


@pytest.mark.slow
def test_loop_with_a_teacher_behind_the_api(openai_server, served_model_dir, tmp_path, monkeypatch):
    """The README's "Teachers behind an API" command: own problems from a file, the student on hf,
    the teacher on a local OpenAI-compatible server, its usage in the sample stage's stats. (The
    student is the served model's directory too, so no tiny model is built here.)"""
    from test_loop import CI   # tests/ is on sys.path (tests/conftest.py)

    from align.recipes import rrtf
    from evol.tasks import generate_problems
    from rank.records import Candidate, read_jsonl, write_jsonl

    monkeypatch.setenv("RRTF_TINY_CACHE", str(tmp_path / "tiny"))
    write_jsonl(tmp_path / "problems.jsonl", generate_problems(8, seed=11, max_depth=2))
    teacher = ("[{ref: %s, backend: openai, template: pangu, sample: {n: 2, max_new_tokens: 48}, "
               "options: {base_url: '%s', api_key_env: null, max_concurrency: 4, cache_dir: '%s'}}]"
               % (openai_server.model, openai_server.base_url, tmp_path / "api-cache"))
    args = ["--base", "tiny", "--run-dir", str(tmp_path / "run"), *[c for c in CI if not c.startswith("models.teachers")],
            f"data.source={tmp_path / 'problems.jsonl'}", f"models.teachers={teacher}", "eval.benchmarks=[]",
            f"models.student.ref={served_model_dir}"]
    res = rrtf.main(args)
    cands = read_jsonl(tmp_path / "run" / "candidates.jsonl", Candidate)
    problems = {p["id"] for p in map(json.loads, (tmp_path / "run" / "problems.jsonl").read_text().splitlines())}
    by_teacher = [c for c in cands if c.role == "teacher"]
    assert len(by_teacher) == 2 * len(problems) and {c.model for c in by_teacher} == {openai_server.model}
    stats = json.loads((tmp_path / "run" / "stages" / "sample.json").read_text())["stats"]
    assert stats["usage"][openai_server.model]["requests"] == 2 * len(problems)
    assert "teacher" in res and 0 <= res["teacher"]["pass@1"] <= 1


def test_loop_config_takes_an_api_model_name_and_refuses_bad_options_at_load(capsys):
    from align.recipes import rrtf

    teacher = "models.teachers=[{ref: gpt-4o-mini, backend: openai, options: {base_url: '%s', max_concurrency: %s}}]"
    rrtf.main(["--base", "tiny", "--dry-run", teacher % ("http://localhost:8000/v1", 4)])   # no path, no hub id: fine
    with pytest.raises(SystemExit):
        rrtf.main(["--base", "tiny", "--dry-run", teacher % ("localhost:8000", 4)])
    assert "models.teachers[0].backend: backend 'openai': base_url must start with http" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rrtf.main(["--base", "tiny", "--dry-run", teacher.replace("max_concurrency", "max_concurency") % ("http://h/v1", 4)])
    assert "unknown option 'max_concurency' (did you mean 'max_concurrency'?)" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_cli_scores_a_model_behind_the_api(openai_server, tmp_path, capsys):
    import shutil

    from align.evaluate import main
    from evol.tasks import generate_problems
    from rank.records import write_jsonl

    write_jsonl(tmp_path / "held.jsonl", generate_problems(4, split="heldout", seed=2, max_depth=1))
    args = [openai_server.model, str(tmp_path / "held.jsonl"), "--backend", "openai",
            "--base-url", openai_server.base_url, "--no-api-key", "-o", f"cache_dir={tmp_path}",
            "--n", "1", "--temperature", "0", "--max-new-tokens", "48"]
    res = main(args + (["--unsafe"] if shutil.which("bwrap") is None else []))
    assert res["n_problems"] == 4 and 0 <= res["pass@1"] <= 1
    assert sum(r["c"] for r in res["per_problem"]) == round(res["pass@1"] * 4)
