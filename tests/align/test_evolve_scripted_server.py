"""An evolution that passes verification, end to end through the `openai` backend: a scripted
OpenAI-compatible HTTP server on localhost answers each evolution prompt with a valid problem,
reference and tests for the entry point the prompt names. (The real served tiny teacher, in
test_evolve_served.py, writes nothing usable; this shows what happens when a teacher does.)"""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from align.config_loader import load
from align.datagen import problems_stage
from align.recipes.loop_config import RunConfig
from align.recipes.cli import RECIPES
from align.rundir import RunDir
from rank.records import Lineage, Problem, read_jsonl, write_jsonl

ANSWER = """### Problem
Return the total length of the string forms of all the arguments, plus 7.
def {ep}(*args):
### Solution
```python
def {ep}(*args):
    return sum(len(str(a)) for a in args) + 7
```
### Tests
assert {ep}(1) == 8
assert {ep}(10, 'ab') == 11
assert {ep}() == 7
assert {ep}(None) == 99
"""


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        ep = re.search(r"must still be called `(\w+)`", prompt)
        text = ANSWER.format(ep=ep.group(1)) if ep else "I'm sorry, I cannot help with that."
        out = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                       "finish_reason": "stop"}],
                          "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


@pytest.mark.slow      # Ray actors for generation: ~30 s here
def test_problems_stage_keeps_a_verified_evolution_from_an_openai_server(scripted_server, tmp_path):
    pytest.importorskip("openai")
    seeds = [Problem(id=f"s{i}", prompt=f"Return the square of x plus {i}.\ndef sq{i}(x):", entry_point=f"sq{i}",
                     tests=[f"assert sq{i}(2) == {4 + i}"], reference=f"def sq{i}(x):\n    return x * x + {i}\n",
                     lineage=Lineage(source="file")) for i in range(2)]
    write_jsonl(tmp_path / "seeds.jsonl", seeds)
    cfg = load(RunConfig, [RECIPES / "tiny/rrtf.yaml"], [
        f"data.source={tmp_path / 'seeds.jsonl'}", "data.n_heldout=2", "data.decontaminate=[]", "evolve.rounds=1",
        "evolve.operators=[add_constraint]", "evolve.model.ref=scripted", "evolve.model.backend=openai",
        "evolve.model.template=chat", f"evolve.model.options.base_url={scripted_server}",
        "evolve.model.options.api_key_env=null", f"evolve.model.options.cache_dir={tmp_path / 'cache'}"])
    run = RunDir(tmp_path / "run", log=lambda *_: None)
    stats = problems_stage(cfg, run, model_path=lambda ref: ref)
    evolved = [p for p in read_jsonl(run.path("problems.jsonl"), Problem) if p.lineage.round == 1]
    assert {p.lineage.parent for p in evolved} == {"s0", "s1"}
    for p in evolved:    # the wrong expectation (== 99) was dropped; the reference passed the rest
        assert len(p.tests) == 3 and p.meta["tests_verified"] == "reference"
        assert p.meta["verification"]["tests_dropped"] == 1 and p.lineage.operator == "add_constraint"
    assert stats["accepted"] == {"1": {"add_constraint": 2}}
