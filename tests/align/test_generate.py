"""Generation backends on a tiny random-init GPTBigCode (CPU). Run: .venv/bin/python -m pytest tests/align/test_generate.py"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from align.generate import (BACKENDS, Backend, BackendUnavailable, HFBackend, SamplingParams, _StopOnText,
                            as_text_fn, generate_with_ray, load_backend, truncate_at_stop)
from rank.plugins import UnknownNameError

DATA = Path(__file__).parents[2].parent / "shared/data"
GPT2 = DATA / "tokenizers/gpt2"
needs_tokenizer = pytest.mark.skipif(not (GPT2 / "tokenizer.json").exists(),
                                     reason=f"GPT-2 tokenizer not found at {GPT2}")

PROMPTS = ["def add(a, b):", "Write a function that reverses a list of integers.\ndef rev(xs):",
           "x", "import os\nimport sys\n", "class A:\n    pass\n"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A random-init StarCoder-architecture model saved with its tokenizer, as a user's checkpoint would be."""
    if not (GPT2 / "tokenizer.json").exists():
        pytest.skip(f"GPT-2 tokenizer not found at {GPT2}")
    import torch
    from transformers import AutoTokenizer, GPTBigCodeConfig, GPTBigCodeForCausalLM

    torch.set_num_threads(1)   # the CI box is 2 shared cores: more threads only contend
    tok = AutoTokenizer.from_pretrained(GPT2)
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


def test_as_text_fn_gives_one_string_per_prompt():
    fn = as_text_fn(EchoBackend("m"), SamplingParams(n=4))
    assert fn(["a", "b"]) == ["m:a", "m:b"]


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
    params = SamplingParams(temperature=0, max_new_tokens=8, stop=[])
    got = load_backend("vllm", tiny_dir, gpu_memory_utilization=0.2).generate(PROMPTS, params)
    assert [len(o) for o in got] == [1] * len(PROMPTS)


@pytest.mark.slow
@needs_tokenizer
def test_ray_replicas_keep_prompt_order(tiny_dir, backend, monkeypatch):
    ray = pytest.importorskip("ray")
    from align.fanout import init_ray

    # Ray workers must import this checkout's packages even when it is not pip-installed.
    root = str(Path(__file__).parents[2])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    started = not ray.is_initialized()
    init_ray(num_cpus=2)
    try:
        params = SamplingParams(temperature=0, max_new_tokens=6, stop=[])
        got = generate_with_ray("hf", tiny_dir, PROMPTS, params, num_replicas=2,
                                backend_kwargs={"batch_size": 2}, num_cpus_per_replica=1)
    finally:
        if started:
            ray.shutdown()
    assert got == backend.generate(PROMPTS, params)
