"""Shared fixtures: a real OpenAI-compatible server on localhost (`transformers serve`).

    def test_x(openai_server):                       # session-scoped; starts once, stopped by pid
        backend = load_backend("openai", openai_server.model, base_url=openai_server.base_url,
                               api_key_env=None, cache_dir=str(tmp_path))

`openai_server.model` is the served model name (the model directory: the tiny teacher from
~/.cache/rrtf-align/tiny when built, else a random-init GPTBigCode built here), with a chat
template and sampling enabled in its generation config, so /v1/completions and
/v1/chat/completions both answer and temperature > 0 samples. `start_openai_server(path)` starts
another one (a context manager). Tests using it skip with a reason when `transformers serve`
(the `transformers[serving]` extra) is not installed.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


@dataclass
class Server:
    base_url: str       # http://127.0.0.1:PORT/v1
    model: str          # the name the server answers to
    pid: int
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_served_model(out: Path) -> Path:
    """A model directory `transformers serve` can load: the cached tiny teacher when present (it
    writes code), else a random-init GPTBigCode with a tokenizer trained here; plus a chat template
    and `do_sample` on (the server only samples when the generation config says so)."""
    from align.tiny import TinyConfig

    teacher = TinyConfig().root() / "teacher"
    if (teacher / "model.safetensors").exists():
        shutil.copytree(teacher, out)
    else:
        import torch
        from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

        from align.tiny import train_tokenizer
        from evol.tasks import generate_problems

        tok = train_tokenizer([p.prompt + "\n" + (p.reference or "") for p in generate_problems(200, seed=0)], 400)
        torch.manual_seed(0)
        cfg = GPTBigCodeConfig(n_layer=2, n_embd=64, n_head=4, vocab_size=len(tok), n_positions=512,
                               bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id)
        GPTBigCodeForCausalLM(cfg).save_pretrained(out)
        tok.save_pretrained(out)
    tc = json.loads((out / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(json.dumps({**tc, "chat_template": CHAT_TEMPLATE}))
    gen = out / "generation_config.json"
    gc = json.loads(gen.read_text()) if gen.exists() else {}
    gen.write_text(json.dumps({**gc, "do_sample": True, "top_k": 0}))
    return out


@contextlib.contextmanager
def start_openai_server(model_dir: Path, log: Path, timeout_s: float = 180):
    """`transformers serve MODEL_DIR` on a free localhost port; yields a Server; stops it by pid."""
    cli = Path(sys.executable).with_name("transformers")
    if not cli.exists() or subprocess.run([sys.executable, "-c", "import fastapi, uvicorn, openai"],
                                          capture_output=True).returncode:
        pytest.skip("`transformers serve` needs the transformers[serving] extra (pip install -e '.[dev]')")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    with open(log, "wb") as fh:
        proc = subprocess.Popen([str(cli), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
                                 "--device", "cpu", "--default-seed", "0"],
                                stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"transformers serve not healthy after {timeout_s}s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield Server(f"http://127.0.0.1:{port}/v1", str(model_dir), proc.pid, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)      # its own session: the server and nothing else
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def served_model_dir(tmp_path_factory) -> Path:
    return build_served_model(tmp_path_factory.mktemp("served") / "model")


@pytest.fixture(scope="session")
def openai_server(served_model_dir, tmp_path_factory):
    with start_openai_server(served_model_dir, tmp_path_factory.mktemp("server") / "serve.log") as server:
        yield server


# Test modules reach these two through fixtures: `from conftest import ...` resolves to whichever
# conftest.py was imported last (tests/rank has one too), so it breaks in a whole-suite run.
@pytest.fixture(scope="session")
def served_model_builder():
    return build_served_model


@pytest.fixture(scope="session")
def serve():
    """`start_openai_server(model_dir, log)`: a context manager for one more server."""
    return start_openai_server
