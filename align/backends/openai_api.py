"""OpenAI-compatible HTTP backend: a hosted API, `vllm serve` or `transformers serve`.

    export OPENAI_API_KEY=...            # or api_key_env: null for a local server without auth
    load_backend("openai", "gpt-4o-mini", base_url="https://api.openai.com/v1", max_concurrency=16)

Text prompts go to /v1/completions, chat messages to /v1/chat/completions. Each sample is its
own request with seed = params.seed + sample index (servers such as `transformers serve`
ignore `n`), sent by at most `max_concurrency` threads. The `openai` client retries 408/409/429/
5xx, timeouts and dropped connections with exponential backoff and jitter, honouring Retry-After.
Every answer is stored in an on-disk SQLite cache keyed by (model, endpoint, prompt, sampling
parameters, sample index) the moment it arrives: a killed job resumes without paying twice and a
rerun makes no request. The API key is read from the environment variable named by `api_key_env`
and never stored in options, cache, logs or config dumps.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align.backends.base import (BackendError, BackendUnavailable, Prompt, SamplingParams, is_chat, new_usage,
                                 parse_options, truncate_at_stop)

MAX_API_STOPS = 4   # the OpenAI API takes at most 4 stop strings; the rest are applied here


def default_cache_dir() -> str:
    return str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rrtf-align" / "api-cache")


@dataclass
class OpenAIOptions:
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str | None = "OPENAI_API_KEY"   # the variable's NAME; None: a server without auth
    served_model: str | None = None              # the server's model name; default: the model ref
    max_concurrency: int = 8                     # requests in flight
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None       # prompt (about 4 chars a token) + max_new_tokens, reserved
    timeout_s: float = 120.0                     # per request attempt
    max_retries: int = 6                         # per request, by the openai client (backoff 0.5 s .. 8 s)
    cache_dir: str | None = None                 # default: ~/.cache/rrtf-align/api-cache
    extra_body: dict[str, Any] = field(default_factory=dict)   # server-specific fields (vLLM: top_k, ...)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        for name in ("requests_per_minute", "tokens_per_minute"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.timeout_s <= 0 or self.max_retries < 0:
            raise ValueError(f"need timeout_s > 0 and max_retries >= 0, got {self.timeout_s}, {self.max_retries}")


class ResponseCache:
    """(key -> answer) in one SQLite file; each answer is committed when it arrives (thread-safe)."""

    def __init__(self, directory: str):
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.path = Path(directory) / "responses.sqlite"
        self._lock = threading.Lock()
        # Replicas in other processes may share the file: wait for their writes instead of failing.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL)")

    @staticmethod
    def key(model: str, endpoint: str, prompt: Prompt, params: SamplingParams, index: int,
            extra: dict[str, Any] | None = None) -> str:
        # n is not in the key: asking for more samples later reuses the first ones.
        sampling = {k: v for k, v in params.to_dict().items() if k != "n"}
        if extra:   # extra request fields change the answer too
            sampling["extra_body"] = extra
        blob = json.dumps([model, endpoint, prompt, sampling, index], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, answer: dict) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?)", (key, json.dumps(answer)))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]


class RateLimiter:
    """Requests and tokens per minute as two token buckets refilled continuously (burst: one minute's worth)."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None):
        self.rates = {"requests": requests_per_minute, "tokens": tokens_per_minute}
        self.level = {k: v for k, v in self.rates.items() if v}
        self.t = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self, tokens: int) -> None:
        need = {"requests": 1, "tokens": tokens}
        while True:
            with self._lock:
                now = time.monotonic()
                for k, rate in self.rates.items():
                    if rate:
                        self.level[k] = min(rate, self.level[k] + (now - self.t) * rate / 60)
                self.t = now
                short = [max(0.0, (min(need[k], self.rates[k]) - self.level[k]) * 60 / self.rates[k])
                         for k in self.level]
                if not any(short):
                    for k in self.level:
                        self.level[k] -= need[k]
                    return
            time.sleep(max(short))


class OpenAIBackend:
    """`generate(prompts, params)` over an OpenAI-compatible server; see the module docstring."""
    Options = OpenAIOptions

    def __init__(self, model: str, **options: Any):
        opts, _ = parse_options(OpenAIOptions, "openai", options)
        try:
            import openai
        except ImportError as e:
            raise BackendUnavailable(f"generation backend 'openai' needs the openai package ({e}); install it "
                                     "with `pip install 'rrtf-align[api]'`") from None
        if opts.api_key_env and not os.environ.get(opts.api_key_env):
            raise BackendError(f"backend 'openai': environment variable {opts.api_key_env} (option api_key_env) is "
                               f"not set; export it, or set api_key_env: null for a server without authentication")
        self.options, self.model = opts, opts.served_model or model
        self.usage = new_usage()
        self._openai = openai
        self._usage_lock = threading.Lock()
        self._limiter = RateLimiter(opts.requests_per_minute, opts.tokens_per_minute)
        self.cache = ResponseCache(opts.cache_dir or default_cache_dir())
        # Each HTTP attempt passes this hook once: attempts beyond one per answer are retries.
        http = openai.DefaultHttpxClient(event_hooks={"request": [lambda _req: self._count("attempts", 1)]},
                                         limits=_limits(opts.max_concurrency))
        self._attempts = self._started = 0
        self.client = openai.OpenAI(
            base_url=opts.base_url, api_key=os.environ[opts.api_key_env] if opts.api_key_env else "none",
            timeout=opts.timeout_s, max_retries=opts.max_retries, http_client=http)

    @classmethod
    def resources(cls, opts: OpenAIOptions, extra: dict, gpus_available: bool) -> dict[str, float]:
        return {"num_cpus": 1, "num_gpus": 0}

    def _count(self, key: str, n: int) -> None:
        with self._usage_lock:
            if key == "attempts":
                self._attempts += n
            elif key == "started":
                self._started += n
            else:
                self.usage[key] += n

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[str]]:
        greedy = params.temperature == 0
        draws = 1 if greedy else params.n          # greedy: one request, copied n times
        out: list[list[str | None]] = [[None] * draws for _ in prompts]
        todo = []
        for i, prompt in enumerate(prompts):
            endpoint = "chat" if is_chat(prompt) else "completions"
            for j in range(draws):
                key = ResponseCache.key(self.model, endpoint, prompt, params, j, self.options.extra_body)
                hit = self.cache.get(key)
                if hit is not None:
                    out[i][j] = hit["text"]
                    self._count("cache_hits", 1)
                else:
                    todo.append((i, j, endpoint, key))
        if todo:
            self._run(todo, prompts, params, out)
        return [[truncate_at_stop(t, [s for s in params.stop if s])[0] for t in outs] * (params.n if greedy else 1)
                for outs in out]

    def _run(self, todo: list, prompts: list[Prompt], params: SamplingParams, out: list) -> None:
        pool = ThreadPoolExecutor(self.options.max_concurrency, thread_name_prefix="openai")
        futures = {pool.submit(self._request, prompts[i], params, j, endpoint, key): (i, j)
                   for i, j, endpoint, key in todo}
        try:
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                for f in pending:
                    f.cancel()
                wait(pending)   # answers in flight still land in the cache
                ok = sum(1 for f in futures if not f.cancelled() and f.exception() is None)
                raise BackendError(
                    f"backend 'openai' at {self.options.base_url}: {ok} of {len(todo)} new samples answered and "
                    f"cached in {self.cache.path} (a rerun resumes from there); first error: "
                    f"{failed[0].exception()}") from failed[0].exception()
            for f, (i, j) in futures.items():
                out[i][j] = f.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            with self._usage_lock:   # every request's first attempt is not a retry
                self.usage["retries"] = self._attempts - self._started

    def _request(self, prompt: Prompt, params: SamplingParams, index: int, endpoint: str, key: str) -> str:
        openai = self._openai
        api_stops = [s for s in params.stop if s][:MAX_API_STOPS] or None
        common = dict(model=self.model, max_tokens=params.max_new_tokens, temperature=params.temperature,
                      top_p=params.top_p, seed=params.seed + index, stop=api_stops,
                      extra_body=self.options.extra_body or None)
        size = (len(prompt) if isinstance(prompt, str) else sum(len(str(m["content"])) for m in prompt)) // 4
        self._limiter.acquire(size + params.max_new_tokens)
        self._count("started", 1)
        where = f"{self.options.base_url} ({endpoint}, model {self.model!r})"
        try:
            if endpoint == "chat":
                resp = self.client.chat.completions.create(messages=prompt, **common)
            else:
                resp = self.client.completions.create(prompt=prompt, **common)
        except openai.APIConnectionError as e:   # includes timeouts, after every retry
            raise BackendError(f"cannot reach {where} after {self.options.max_retries} retries: {e}") from None
        except openai.APIStatusError as e:
            raise BackendError(f"{where} answered HTTP {e.status_code}: {_short(str(e.body or e.message))}") from None
        except openai.APIError as e:             # e.g. a body that is not JSON
            raise BackendError(f"malformed answer from {where}: {_short(str(e))}") from None
        text = _answer_text(resp, endpoint)
        if text is None:
            raise BackendError(f"malformed answer from {where}: no choices[0]."
                               f"{'message.content' if endpoint == 'chat' else 'text'} in {_short(repr(resp))}")
        usage = getattr(resp, "usage", None)
        self.cache.put(key, {"text": text})
        self._count("requests", 1)
        self._count("prompt_tokens", int(getattr(usage, "prompt_tokens", 0) or 0))
        self._count("completion_tokens", int(getattr(usage, "completion_tokens", 0) or 0))
        return text


def _answer_text(resp: Any, endpoint: str) -> str | None:
    choices = getattr(resp, "choices", None)
    if not isinstance(choices, list) or not choices:
        return None
    first = choices[0]
    text = getattr(getattr(first, "message", None), "content", None) if endpoint == "chat" else getattr(first, "text", None)
    return text if isinstance(text, str) else None


def _limits(concurrency: int) -> Any:
    try:    # openai >= 3 is built on httpx2, earlier versions on httpx
        import httpx2 as httpx
    except ImportError:
        import httpx

    return httpx.Limits(max_connections=max(100, concurrency), max_keepalive_connections=concurrency)


def _short(text: str, n: int = 300) -> str:
    return text if len(text) <= n else text[:n] + "..."
