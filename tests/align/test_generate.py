"""Generation backends on a tiny random-init GPTBigCode with a tokenizer trained here (CPU); the
backend contract (options, resources, no heavy imports); vLLM's argument filter.
Run: .venv/bin/python -m pytest tests/align/test_generate.py"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from align.backends.hf import HFBackend, _StopOnText
from align.generate import (BACKENDS, Backend, BackendOptionError, BackendUnavailable, SamplingParams,
                            backend_resources, check_backend, load_backend, truncate_at_stop)
from rank.plugins import UnknownNameError
from rank.records import Problem

PROMPTS = ["def add(a, b):", "Write a function that reverses a list of integers.\ndef rev(xs):",
           "x", "import os\nimport sys\n", "class A:\n    pass\n"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A random-init StarCoder-architecture model saved with its tokenizer (trained here on the
    built-in tasks) and a chat template, as a user's checkpoint would be."""
    import torch
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    from align.tiny import train_tokenizer
    from evol.tasks import generate_problems

    torch.set_num_threads(1)   # the CI box is 2 shared cores: more threads only contend
    tok = train_tokenizer([p.prompt + "\n" + (p.reference or "") for p in generate_problems(200, seed=0)], 400)
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    torch.manual_seed(0)
    cfg = GPTBigCodeConfig(n_layer=2, n_embd=64, n_head=4, multi_query=True, vocab_size=len(tok), n_positions=256,
                           bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    path = tmp_path_factory.mktemp("tiny-bigcode")
    GPTBigCodeForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def backend(tiny_dir):
    return load_backend("hf", tiny_dir, batch_size=4)


def test_truncate_at_stop_takes_earliest():
    assert truncate_at_stop("a = 1\nprint(a)\n\"\"\"", ['\n"""', "\nprint("]) == ("a = 1", True)
    assert truncate_at_stop("abc", ["x", ""]) == ("abc", False)


def test_sampling_params_reject_bad_values():
    for bad in ({"n": 0}, {"temperature": -1}, {"top_p": 0}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_registry_resolves_builtins_user_classes_and_suggests():
    assert set(BACKENDS) >= {"hf", "vllm"}
    fake = load_backend(f"{__name__}:EchoBackend", "m")
    assert isinstance(fake, Backend)
    assert fake.generate(["p"], SamplingParams(n=2)) == [["m:p", "m:p"]]
    with pytest.raises(UnknownNameError, match="did you mean 'hf'"):
        load_backend("hff", "m")


class EchoBackend:
    def __init__(self, model: str):
        self.model = model

    def generate(self, prompts, params):
        return [[f"{self.model}:{p}"] * params.n for p in prompts]


def test_greedy_batched_equals_one_by_one(backend, tiny_dir):
    params = SamplingParams(temperature=0, max_new_tokens=12, stop=[])
    batched = backend.generate(PROMPTS, params)
    single = load_backend("hf", tiny_dir, batch_size=1).generate(PROMPTS, params)
    assert batched == single          # left padding + attention mask must not change greedy output
    assert all(len(outs) == 1 and outs[0] for outs in batched)


def test_sampling_shapes_determinism_and_seed(backend):
    p = SamplingParams(n=3, temperature=1.0, top_p=0.95, max_new_tokens=8, stop=[], seed=7)
    a, b = backend.generate(PROMPTS, p), backend.generate(PROMPTS, p)
    assert [len(x) for x in a] == [3] * len(PROMPTS)
    assert a == b
    assert backend.generate(PROMPTS, SamplingParams(**{**p.to_dict(), "seed": 8})) != a
    assert len(set(a[0])) > 1         # temperature 1 on a random model: samples differ


def test_in_memory_model_and_tokenizer_are_not_reconfigured(backend):
    tok = backend.tokenizer
    side, pad = tok.padding_side, tok.pad_token
    again = HFBackend(backend.model, tokenizer=tok, batch_size=2)
    assert again.generate(PROMPTS[:2], SamplingParams(temperature=0, max_new_tokens=4)) == \
        backend.generate(PROMPTS[:2], SamplingParams(temperature=0, max_new_tokens=4))
    assert (tok.padding_side, tok.pad_token) == (side, pad)   # a trainer sharing it keeps its padding


def test_greedy_n_copies(backend):
    outs = backend.generate(PROMPTS[:2], SamplingParams(n=3, temperature=0, max_new_tokens=6, stop=[]))
    assert all(len(set(o)) == 1 and len(o) == 3 for o in outs)


def test_stop_string_truncates_at_first_occurrence(backend):
    free = backend.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=16, stop=[]))
    text = free[1][0]
    stop = text[len(text) // 2: len(text) // 2 + 3]   # a substring of the greedy output
    cut = backend.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=16, stop=[stop]))
    assert cut[1][0] == text[:text.index(stop)]
    assert stop not in cut[1][0]


def test_stop_criterion_flags_rows_with_a_stop_in_new_text(backend):
    import torch

    tok = backend.tokenizer
    prompt = tok("END\ndef f():", add_special_tokens=False)["input_ids"]   # "END" in the prompt must not count
    rows = [prompt + tok("\n    return 1\nEND", add_special_tokens=False)["input_ids"],
            prompt + tok("\n    return 1\n", add_special_tokens=False)["input_ids"]]
    width = max(map(len, rows))   # a finished row is padded on the right, as generate does
    ids = torch.tensor([r + [backend.pad_id] * (width - len(r)) for r in rows])
    done = _StopOnText(tok, len(prompt), ["END"])(ids, None)
    assert done.tolist() == [True, False]


def test_vllm_missing_is_a_clear_error():
    pytest.importorskip("transformers")
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed: covered by the GPU test")
    except ImportError:
        pass
    with pytest.raises(BackendUnavailable, match="pip install"):
        load_backend("vllm", "bigcode/starcoderbase-1b")


@pytest.mark.gpu
def test_vllm_greedy_matches_hf(tiny_dir):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (vLLM's official wheel is GPU-only); the HF path is covered on CPU")
    pytest.importorskip("vllm", reason="vllm not installed (optional extra)")
    params = SamplingParams(n=2, temperature=0, max_new_tokens=8, stop=[])
    got = load_backend("vllm", tiny_dir, gpu_memory_utilization=0.2, enforce_eager=True).generate(PROMPTS, params)
    want = load_backend("hf", tiny_dir, device="cuda", dtype="float32").generate(PROMPTS, params)
    assert [len(o) for o in got] == [2] * len(PROMPTS)
    # Same weights, greedy: the same text, up to float reductions that may flip a near-tie token.
    same = sum(g[0] == w[0] for g, w in zip(got, want))
    assert same >= len(PROMPTS) - 1, (got, want)


@pytest.mark.gpu
def test_engine_args_list_matches_installed_vllm():
    vllm = pytest.importorskip("vllm", reason="vllm not installed (optional extra)")
    from align.backends.vllm_args import ENGINE_ARGS

    fields = {f.name for f in dataclasses.fields(vllm.EngineArgs)} - {"model"}
    print(f"vllm {vllm.__version__}: only ours {sorted(ENGINE_ARGS - fields)}, only vllm's {sorted(fields - ENGINE_ARGS)}")
    from align.backends.vllm import VLLMOptions

    assert {f.name for f in dataclasses.fields(VLLMOptions)} <= fields   # our typed options exist there
    if vllm.__version__.startswith("0.11."):                            # the version the list was taken from
        assert ENGINE_ARGS == fields


def test_vllm_options_are_filtered_against_engine_args():
    from align.backends.vllm import VLLMOptions, engine_kwargs
    from align.backends.vllm_args import ENGINE_ARGS

    assert {"tensor_parallel_size", "enforce_eager", "max_num_seqs", "quantization"} <= ENGINE_ARGS
    own = {f.name for f in dataclasses.fields(VLLMOptions)}
    assert own <= ENGINE_ARGS                        # our typed options are EngineArgs fields too
    for name in sorted(ENGINE_ARGS - own):           # every EngineArgs field passes through to vllm.LLM
        assert engine_kwargs({name: 1}) == {"tensor_parallel_size": 1, "dtype": "auto",
                                            "gpu_memory_utilization": 0.9, name: 1}
    for bad in ("batch_size", "device", "tensor_parallel", "max_model_length"):
        with pytest.raises(BackendOptionError, match=f"unknown option {bad!r}"):
            check_backend("vllm", {bad: 1})
    kw = engine_kwargs({"tensor_parallel_size": 4, "max_model_len": 2048, "enforce_eager": True})
    assert kw == {"tensor_parallel_size": 4, "dtype": "auto", "gpu_memory_utilization": 0.9,
                  "max_model_len": 2048, "enforce_eager": True}
    assert set(kw) <= ENGINE_ARGS


def test_resources_for_ray_placement():
    assert backend_resources("vllm", {"tensor_parallel_size": 4}) == {"num_cpus": 1, "num_gpus": 4}
    assert backend_resources("vllm", {"tensor_parallel_size": 2, "pipeline_parallel_size": 2})["num_gpus"] == 4
    assert backend_resources("hf", {"device": "cuda"})["num_gpus"] == 1
    assert backend_resources("hf", {})["num_gpus"] == 0
    assert backend_resources("hf", {}, gpus_available=True)["num_gpus"] == 1
    assert backend_resources("hf", {"device": "cpu"}, gpus_available=True)["num_gpus"] == 0
    assert backend_resources("openai", {"base_url": "http://h:1/v1"}, gpus_available=True)["num_gpus"] == 0
    assert backend_resources(f"{__name__}:EchoBackend") == {"num_cpus": 1, "num_gpus": 0}


def test_option_checks_name_the_option_and_suggest():
    with pytest.raises(BackendOptionError, match="unknown option 'batchsize' .*did you mean 'batch_size'.*valid: "
                                                 "batch_size, device, dtype, trust_remote_code"):
        check_backend("hf", {"batchsize": 4})
    with pytest.raises(BackendOptionError, match="dtype must be one of"):
        check_backend("hf", {"dtype": "fp16"})
    with pytest.raises(BackendOptionError, match="batch_size': expected an integer"):
        check_backend("hf", {"batch_size": "4"})
    with pytest.raises(BackendOptionError, match="unknown option 'temperature'; valid: none"):
        check_backend(f"{__name__}:EchoBackend", {"temperature": 1})
    with pytest.raises(UnknownNameError, match="did you mean 'openai'"):
        check_backend("opneai", {})


def test_check_backend_imports_nothing_heavy():
    code = ("import sys; from align.generate import check_backend, backend_resources; "
            "check_backend('vllm', {'tensor_parallel_size': 2}); check_backend('openai', {'max_concurrency': 2}); "
            "check_backend('hf', {'device': 'cuda'}); backend_resources('vllm', {}); "
            "print(sorted(m for m in ('torch', 'transformers', 'vllm', 'openai', 'ray', 'httpx2') if m in sys.modules))")
    root = str(Path(__file__).parents[2])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": root, "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]", out.stdout


def test_hf_chat_prompts_use_the_chat_template(backend):
    params = SamplingParams(temperature=0, max_new_tokens=8, stop=[])
    msgs = [{"role": "user", "content": "Write add(a, b)."}]
    rendered = backend.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("assistant: ")
    assert backend.generate([msgs, "x"], params) == backend.generate([rendered, "x"], params)
    with pytest.raises(TypeError, match="a prompt is a str or a list of"):
        backend.generate([{"role": "user"}], params)


def test_hf_device_and_dtype_options(tiny_dir):
    import torch

    b = load_backend("hf", tiny_dir, device="cpu", dtype="bfloat16", batch_size=2)
    assert b.model.dtype == torch.bfloat16 and b.model.device.type == "cpu"
    assert len(b.generate(PROMPTS[:2], SamplingParams(temperature=0, max_new_tokens=4))) == 2
    auto = load_backend("hf", tiny_dir)                           # auto: cuda when there is one
    assert auto.model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert auto.model.dtype == torch.float32 or torch.cuda.is_available()
    assert auto.usage["requests"] == 0
    auto.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=4, stop=[]))
    assert auto.usage["prompt_tokens"] > 0 and 0 < auto.usage["completion_tokens"] <= 4 * len(PROMPTS)


@pytest.mark.gpu
def test_hf_runs_on_cuda_in_bfloat16(tiny_dir, backend):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU; test_hf_device_and_dtype_options covers the same path on CPU")
    b = load_backend("hf", tiny_dir, device="cuda", dtype="bfloat16")
    assert b.model.device.type == "cuda" and b.model.dtype == torch.bfloat16
    fp32 = load_backend("hf", tiny_dir, device="cuda", dtype="float32")
    params = SamplingParams(temperature=0, max_new_tokens=8, stop=[])
    assert fp32.generate(PROMPTS, params) == backend.generate(PROMPTS, params)   # GPU fp32 = CPU fp32
    assert len(b.generate(PROMPTS, params)) == len(PROMPTS)


# ---------------------------------------------------------------- the sampling CLI

def test_cli_samples_resumes_and_repairs_a_killed_write(tiny_dir, tmp_path, capsys):
    from align.generate import main
    from evol.tasks import generate_problems
    from rank.records import Candidate, read_jsonl, write_jsonl

    problems = tmp_path / "problems.jsonl"
    write_jsonl(problems, generate_problems(5, seed=3))
    out = tmp_path / "cands.jsonl"
    args = ["--model", tiny_dir, "--backend", "hf", "-o", "batch_size=4", "--in", str(problems), "--out", str(out),
            "--n", "2", "--max-new-tokens", "6", "--template", "pangu", "--chunk", "2"]
    first = main(args + ["--limit", "3"])
    assert first["candidates_written"] == 6 and first["skipped"] == 0 and first["usage"]["requests"] > 0
    rows = read_jsonl(out, Candidate)
    assert len({r.id for r in rows}) == 6 and {r.params["template"] for r in rows} == {"pangu"}

    with open(out, "a") as fh:                         # a kill in the middle of a write
        fh.write(json.dumps({**dataclasses.asdict(rows[0]), "problem_id": "half"})[:40])
    second = main(args)
    assert second["skipped"] == 3 and second["candidates_written"] == 4
    again = read_jsonl(out, Candidate)
    assert again[:6] == rows and len({r.id for r in again}) == 10
    assert {r.problem_id for r in again} == {p.id for p in read_jsonl(problems, Problem)}
    assert main(args)["candidates_written"] == 0       # everything there: nothing sampled

    with pytest.raises(SystemExit, match="sampled with .*give another --out"):
        main([*args[:-6], "--n", "2", "--max-new-tokens", "7", "--template", "pangu"])
    with pytest.raises(SystemExit):
        main([*args, "-o", "batchsize=3"])
    assert "unknown option 'batchsize'" in capsys.readouterr().err


def test_vllm_backend_glue_on_cpu_with_a_recording_engine(tiny_dir, monkeypatch, backend):
    """CPU coverage of VLLMBackend (the GPU test runs the real engine): what vllm.LLM and
    vllm.SamplingParams receive, the prompts' token ids (chat template included, as the hf backend
    encodes them), greedy copies, and usage. The engine here is a recorder, not a model."""
    import types

    from align.backends.base import encode_prompt

    seen = {}

    class LLM:
        def __init__(self, model, **kwargs):
            seen["llm"] = {"model": model, **kwargs}

        def get_tokenizer(self):
            return backend.tokenizer

        def generate(self, prompts, sp, use_tqdm):
            seen["prompts"], seen["sp"] = prompts, sp
            out = types.SimpleNamespace
            return [out(prompt_token_ids=p["prompt_token_ids"],
                        outputs=[out(text=f"t{i}.{j}\nSTOP tail", token_ids=[1, 2]) for j in range(sp.kw["n"])])
                    for i, p in enumerate(prompts)]

    class VSampling:
        def __init__(self, **kw):
            self.kw = kw

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=VSampling))
    b = load_backend("vllm", tiny_dir, tensor_parallel_size=2, enforce_eager=True)
    assert seen["llm"] == {"model": tiny_dir, "tensor_parallel_size": 2, "dtype": "auto",
                           "gpu_memory_utilization": 0.9, "enforce_eager": True}
    chat = [{"role": "user", "content": "add"}]
    got = b.generate(["def f():", chat], SamplingParams(n=3, temperature=0.7, top_p=0.9, max_new_tokens=5,
                                                        stop=["\nSTOP", ""], seed=4))
    assert got == [[f"t0.{j}" for j in range(3)], [f"t1.{j}" for j in range(3)]]
    assert seen["sp"].kw == {"n": 3, "temperature": 0.7, "top_p": 0.9, "max_tokens": 5, "stop": ["\nSTOP"], "seed": 4}
    assert [p["prompt_token_ids"] for p in seen["prompts"]] == [encode_prompt(backend.tokenizer, p)
                                                               for p in ["def f():", chat]]
    assert b.usage["requests"] == 2 and b.usage["completion_tokens"] == 12
    greedy = b.generate(["x"], SamplingParams(n=2, temperature=0, stop=[]))
    assert seen["sp"].kw["n"] == 1 and seen["sp"].kw["top_p"] == 1.0 and greedy == [["t0.0\nSTOP tail"] * 2]
