"""Training jobs in-process, under torchrun (2 CPU processes, gloo, DeepSpeed ZeRO-3) and on Ray Train.

    .venv/bin/python -m pytest tests/align/test_distributed.py            # fast tier + slow tier
    .venv/bin/python -m pytest tests/align/test_distributed.py -m "not slow"
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from align.train import distributed  # noqa: E402
from align.train.distributed import JobSpec, deepspeed_config, run_job, run_ray, run_torchrun  # noqa: E402

# The tiny-model builder and rows live next door; loaded by path so no package layout is assumed.
_spec = importlib.util.spec_from_file_location("_trl_helpers", Path(__file__).with_name("test_trl_train.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

TINY = {"per_device_train_batch_size": 2, "max_length": 64, "save_strategy": "no",
        "gradient_checkpointing": False, "learning_rate": 1e-3}
RANK_ROWS = [
    {"prompt": f"Return x plus {i}.\ndef f(x):", "responses": [f"def f(x):\n    return x + {i}", f"def f(x):\n    return x - {i}"],
     "scores": [3.0, 1.0], "roles": ["teacher", "student"]} for i in range(4)
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return helpers.make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _rows_file(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _spec(tmp_path: Path, model: Path, method: str, rows: list[dict], **kw) -> JobSpec:
    data = {"method": method, "model_path": str(model), "rows_path": _rows_file(tmp_path / f"{method}.jsonl", rows),
            "output_dir": str(tmp_path / "out"), **kw}
    return JobSpec.from_dict(data)


def _check_saved(out: str | Path, metrics: dict, steps: int | None) -> None:
    from transformers import AutoModelForCausalLM

    assert math.isfinite(metrics["train_loss"])
    assert json.loads((Path(out) / "metrics.json").read_text()) == metrics  # rank 0 wrote what came back
    if steps is not None:
        assert metrics["global_step"] == steps
    AutoModelForCausalLM.from_pretrained(out)


# ---------------------------------------------------------------- fast tier


@pytest.mark.parametrize("name,stage", [("zero2", 2), ("zero3", 3), ("zero3_offload", 3)])
def test_deepspeed_presets(name, stage):
    cfg = json.loads(Path(deepspeed_config(name)).read_text())
    assert cfg["zero_optimization"]["stage"] == stage
    # The trainer fills batch sizes from its own args and world size; a fixed train_batch_size would
    # disagree with the world size DeepSpeed sees while the model loads under zero.Init.
    assert "train_batch_size" not in cfg
    assert cfg["train_micro_batch_size_per_gpu"] == cfg["gradient_accumulation_steps"] == "auto"
    assert cfg["bf16"]["enabled"] == "auto"
    if stage == 3:
        assert cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_deepspeed_config_takes_a_path_and_suggests(tmp_path):
    own = tmp_path / "mine.json"
    own.write_text("{}")
    assert deepspeed_config(own) == str(own.resolve())
    with pytest.raises(ValueError, match="did you mean 'zero3'"):
        deepspeed_config("zero33")


def test_spec_errors_name_the_problem(tiny_model, tmp_path):
    rows = _rows_file(tmp_path / "r.jsonl", helpers.sft_rows(2))
    base = {"method": "sft", "model_path": str(tiny_model), "rows_path": rows, "output_dir": str(tmp_path)}
    with pytest.raises(ValueError, match="job spec: deepspeeed: unknown key \\(did you mean 'deepspeed'\\?\\)"):
        JobSpec.from_dict({**base, "deepspeeed": "zero3"})
    with pytest.raises(ValueError, match="'rrtff'.*'rrtf'"):
        JobSpec.from_dict({**base, "method": "rrtff"})
    with pytest.raises(FileNotFoundError, match="model_path"):
        JobSpec.from_dict({**base, "model_path": str(tmp_path / "nope")})
    with pytest.raises(ValueError, match="missing"):
        JobSpec.from_dict({"method": "sft"})
    with pytest.raises(ValueError, match="preset"):
        JobSpec.from_dict({**base, "deepspeed": "zero9"})
    assert set(distributed.METHODS) == {"rrtf", "rrhf", "dpo", "sft"}


def test_read_rows_names_file_and_line(tmp_path):
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"prompt": "a"}\n{oops\n')
    with pytest.raises(ValueError, match=r"rows.jsonl:2"):
        distributed.read_rows(bad)


def test_in_process_job_stops_and_resumes_from_checkpoint(tiny_model, tmp_path):
    """Train 3 steps as 2 + resume: the second run starts from checkpoint-2 and ends at step 3."""
    cfg = {**TINY, "save_strategy": "steps", "save_steps": 1, "save_total_limit": 1}
    first = run_job(_spec(tmp_path, tiny_model, "sft", helpers.sft_rows(), config={**cfg, "max_steps": 2}))
    assert first["global_step"] == 2 and first["resumed_from"] is None
    assert (tmp_path / "out" / "checkpoint-2").is_dir()
    second = run_job(_spec(tmp_path, tiny_model, "sft", helpers.sft_rows(), config={**cfg, "max_steps": 3}))
    assert second["resumed_from"].endswith("checkpoint-2")
    _check_saved(tmp_path / "out", second, steps=3)


def test_in_process_rrhf_job_reaches_the_rank_trainer(tiny_model, tmp_path):
    pytest.importorskip("align.train.rank_trainer")
    spec = _spec(tmp_path, tiny_model, "rrhf", RANK_ROWS, loss={"rank_weight": 0.5},
                 config={"max_steps": 1, "per_device_train_batch_size": 2, "logging_steps": 1},
                 options={"max_length": 64})
    metrics = run_job(spec)
    _check_saved(spec.output_dir, metrics, steps=None)
    assert metrics["last_pairs"] > 0


def test_in_process_rrtf_job_with_lora_saves_a_merged_model(tiny_model, tmp_path):
    pytest.importorskip("peft")
    spec = _spec(tmp_path, tiny_model, "rrtf", RANK_ROWS, lora={"r": 4, "target_modules": ["c_attn"]},
                 config={"max_steps": 1, "per_device_train_batch_size": 2}, options={"max_length": 64})
    _check_saved(spec.output_dir, run_job(spec), steps=1)
    assert (Path(spec.output_dir) / "adapter" / "adapter_config.json").exists()


def test_hub_ids_reach_the_workers_and_paths_are_absolute(tiny_model, tmp_path, monkeypatch):
    rows = _rows_file(tmp_path / "r.jsonl", helpers.sft_rows(2))
    base = {"method": "sft", "model_path": "bigcode/starcoder", "rows_path": rows, "output_dir": str(tmp_path / "o")}
    assert JobSpec.from_dict(base).model_path == "bigcode/starcoder"      # a hub id: each worker loads it
    with pytest.raises(ValueError, match="relative"):
        JobSpec.from_dict({**base, "rows_path": "r.jsonl"})
    with pytest.raises(FileNotFoundError, match="model_path"):
        JobSpec.from_dict({**base, "model_path": str(tmp_path / "nope")})
    # Ray Train V2 runs each worker in its own directory: the driver's relative paths become absolute.
    monkeypatch.chdir(tmp_path)
    spec = JobSpec.from_dict({**base, "model_path": str(tiny_model), "rows_path": "r.jsonl", "output_dir": "o"},
                             check=False).resolved()
    assert spec.rows_path == rows and spec.output_dir == str(tmp_path / "o")


def _hub_cache(model: Path, cache: Path, repo: str) -> None:
    """`model` laid out as the HF hub cache holds a downloaded `repo` (what a worker finds after a download)."""
    import shutil

    commit = "0" * 40
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(model, root / "snapshots" / commit)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)


def test_a_worker_loads_a_hub_id(tiny_model, tmp_path):
    """The job spec names `org/tiny`, never a path: the worker process resolves it from its HF cache."""
    import os
    import subprocess
    import sys

    _hub_cache(tiny_model, tmp_path / "hub", "org/tiny")
    spec = {"method": "sft", "model_path": "org/tiny", "rows_path": _rows_file(tmp_path / "r.jsonl", helpers.sft_rows(2)),
            "output_dir": str(tmp_path / "out"), "config": {**TINY, "max_steps": 1}}
    (tmp_path / "job.json").write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(distributed.REPO_ROOT)}
    subprocess.run([sys.executable, "-m", "align.train.distributed", "--spec", str(tmp_path / "job.json")],
                   env=env, check=True, timeout=300, capture_output=True)
    _check_saved(tmp_path / "out", json.loads((tmp_path / "out" / "metrics.json").read_text()), steps=1)


def test_a_checkpoint_is_resumed_only_under_the_same_fingerprint(tiny_model, tmp_path):
    """A rerun with a new learning rate starts over; one that only runs longer continues."""
    cfg = {**TINY, "save_strategy": "steps", "save_steps": 1, "save_total_limit": 1}
    spec = _spec(tmp_path, tiny_model, "sft", helpers.sft_rows(), config={**cfg, "max_steps": 2})
    assert distributed.launch(spec)["resumed_from"] is None
    longer = distributed.launch(dataclasses.replace(spec, config={**cfg, "max_steps": 3}))
    assert longer["resumed_from"].endswith("checkpoint-2") and longer["global_step"] == 3
    new_lr = distributed.launch(dataclasses.replace(spec, config={**cfg, "max_steps": 3, "learning_rate": 5e-4}))
    assert new_lr["resumed_from"] is None and new_lr["global_step"] == 3
    # other rows or another world size (ZeRO shards per rank) are other jobs too
    before = spec.fingerprint(1)
    assert before != spec.fingerprint(2)
    _rows_file(Path(spec.rows_path), helpers.sft_rows(3))
    assert spec.fingerprint(1) != before


def test_a_ray_worker_refuses_storage_it_does_not_share(tmp_path):
    with pytest.raises(RuntimeError, match="not visible here.*every node mounts"):
        distributed.check_shared_storage(str(tmp_path), "abc")
    (tmp_path / ".driver-abc").write_text("driver")
    distributed.check_shared_storage(str(tmp_path), "abc")
    with pytest.raises(RuntimeError, match="not visible"):
        distributed.ray_train_loop({"spec": {"output_dir": str(tmp_path / "elsewhere")}, "token": "abc"})


def test_torchrun_command_single_and_multi_node():
    one = distributed.torchrun_command("/s/job.json", 8)
    assert "--standalone" in one and "--nproc_per_node=8" in one
    env = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    two = distributed.torchrun_command("/s/job.json", 8, num_nodes=2, env=env)
    assert "--standalone" not in two and "--nnodes=2" in two and "--rdzv-endpoint=10.0.0.1:29500" in two
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        distributed.torchrun_command("/s/job.json", 8, num_nodes=2, env={})


def test_max_length_truncation_is_reported(tiny_model, tmp_path):
    spec = _spec(tmp_path, tiny_model, "rrtf", RANK_ROWS, config={"max_steps": 1, "per_device_train_batch_size": 2},
                 options={"max_length": 12})
    metrics = run_job(spec)
    assert metrics["truncation_max_length"] == 12 and metrics["truncation_sequences"] == 8
    assert metrics["truncation_responses_cut"] > 0 and metrics["truncation_longest"] > 12
    from align.tokenization import encode
    from align.train.trl_train import length_stats

    tok, rows = helpers.make_tokenizer(), helpers.pair_rows(4)
    lengths = [len(p) + len(c) for r in rows
               for p, cs in [encode(tok, r["prompt"], [r["chosen"], r["rejected"]])] for c in cs]
    cut = sorted(lengths)[len(lengths) // 2]
    stats = length_stats(tok, rows, ("chosen", "rejected"), cut)
    assert stats == {"max_length": cut, "sequences": 8, "over_max_length": sum(n > cut for n in lengths),
                     "prompts_over_max_length": 0, "longest": max(lengths)}


_LORA_ZERO3 = """
import json, os, sys, torch
from align.train.distributed import deepspeed_config, _free_port
for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(_free_port())}.items():
    os.environ[k] = v
from transformers import AutoModelForCausalLM, TrainingArguments
from align.train.checkpoints import peft_model
args = TrainingArguments(output_dir=sys.argv[2], deepspeed=deepspeed_config("zero3"), use_cpu=True, bf16=True,
                         gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
model = peft_model(AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16),
                   {"r": 4, "target_modules": ["c_attn"]}, args)
print(json.dumps({"adapter": sorted({str(p.dtype) for n, p in model.named_parameters() if "lora_" in n}),
                  "gc": args.activation_checkpointing_kwargs}))   # what the Trainer reads (transformers 5)
"""


def test_lora_under_zero3_keeps_the_base_dtype_and_reentrant_checkpointing(tiny_model, tmp_path):
    """TRL's two workarounds for PEFT under ZeRO-3, on a bf16 base (in a subprocess: ZeRO-3's global config
    would otherwise partition every later model of this test session)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _LORA_ZERO3, str(tiny_model), str(tmp_path)], capture_output=True,
                         text=True, timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(distributed.REPO_ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"adapter": ["torch.bfloat16"], "gc": {"use_reentrant": True}}


# ---------------------------------------------------------------- slow tier: 2 processes on CPU


@pytest.mark.slow
def test_torchrun_dpo_precomputed_reference_two_processes(tiny_model, tmp_path):
    """precompute_ref_log_probs on 2 ranks: rank 0 caches the reference log-probs where every rank reads."""
    spec = _spec(tmp_path, tiny_model, "dpo", helpers.pair_rows(),
                 config={**TINY, "max_steps": 2, "precompute_ref_log_probs": True})
    _check_saved(spec.output_dir, run_torchrun(spec, nproc=2, timeout=300), steps=2)


@pytest.mark.slow
def test_torchrun_rrtf_two_processes_without_deepspeed(tiny_model, tmp_path):
    """Plain DDP: the trainer hands the loss the DistributedDataParallel wrapper, not the model."""
    spec = _spec(tmp_path, tiny_model, "rrtf", RANK_ROWS,
                 config={"max_steps": 1, "per_device_train_batch_size": 2, "logging_steps": 1},
                 options={"max_length": 64})
    _check_saved(spec.output_dir, run_torchrun(spec, nproc=2, timeout=300), steps=1)


@pytest.mark.slow
def test_torchrun_zero3_lora_rrtf_bf16_two_processes(tiny_model, tmp_path):
    """LoRA on a bf16 base under ZeRO-3 with activation checkpointing, 2 CPU ranks (item 8's setup)."""
    pytest.importorskip("peft")
    spec = _spec(tmp_path, tiny_model, "rrtf", RANK_ROWS, deepspeed="zero3", lora={"r": 4, "target_modules": ["c_attn"]},
                 config={"max_steps": 2, "per_device_train_batch_size": 2, "bf16": True, "gradient_checkpointing": True},
                 options={"max_length": 64, "model_init_kwargs": {"dtype": "bfloat16"}})
    metrics = run_torchrun(spec, nproc=2, timeout=300)
    _check_saved(spec.output_dir, metrics, steps=2)
    assert math.isfinite(metrics["last_rank_loss"]) and metrics["last_pairs"] > 0


@pytest.mark.slow
def test_torchrun_zero3_dpo_two_processes_resumes(tiny_model, tmp_path):
    cfg = {**TINY, "save_strategy": "steps", "save_steps": 1}
    spec = _spec(tmp_path, tiny_model, "dpo", helpers.pair_rows(), deepspeed="zero3", config={**cfg, "max_steps": 1})
    first = run_torchrun(spec, nproc=2, timeout=300)
    assert first["global_step"] == 1
    spec.config["max_steps"] = 2  # the DeepSpeed ZeRO-3 checkpoint (sharded over 2 ranks) is reloaded
    second = run_torchrun(spec, nproc=2, timeout=300)
    assert second["resumed_from"].endswith("checkpoint-1")
    _check_saved(spec.output_dir, second, steps=2)


@pytest.mark.slow
@pytest.mark.parametrize("lora", [None, {"r": 4, "target_modules": ["c_attn"]}], ids=["full", "lora"])
def test_torchrun_zero3_rrtf_two_processes(tiny_model, tmp_path, lora):
    pytest.importorskip("align.train.rank_trainer")
    spec = _spec(tmp_path, tiny_model, "rrtf", RANK_ROWS, deepspeed="zero3", lora=lora,
                 config={"max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-3, "logging_steps": 1},
                 options={"max_length": 64})
    metrics = run_torchrun(spec, nproc=2, timeout=300)
    # LoRA: rank 0 merges the adapter alone after training, which must not wait on ZeRO-3 collectives.
    _check_saved(spec.output_dir, metrics, steps=2)
    assert math.isfinite(metrics["last_rank_loss"]) and metrics["last_pairs"] > 0


@pytest.mark.slow
def test_ray_train_two_workers_zero3_dpo(tiny_model, tmp_path):
    pytest.importorskip("ray.train")
    spec = _spec(tmp_path, tiny_model, "dpo", helpers.pair_rows(), deepspeed="zero3", config={**TINY, "max_steps": 2})
    metrics = run_ray(spec, num_workers=2)
    _check_saved(spec.output_dir, metrics, steps=2)


# ---------------------------------------------------------------- GPU tier


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; the slow tier covers ZeRO-3 on CPU")
def test_gpu_bf16_zero3_dpo(tiny_model, tmp_path):
    spec = _spec(tmp_path, tiny_model, "dpo", helpers.pair_rows(), deepspeed="zero3",
                 config={**TINY, "max_steps": 2, "bf16": True})
    metrics = run_torchrun(spec, nproc=torch.cuda.device_count(), timeout=600)
    _check_saved(spec.output_dir, metrics, steps=2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; test_torchrun_zero3_lora_rrtf_bf16_two_processes "
                                                          "covers the same path on CPU")
def test_gpu_bf16_zero3_lora_rrtf_with_checkpointing(tiny_model, tmp_path):
    """Item 8 where it bites: NCCL ZeRO-3 gathers of a bf16 base with LoRA adapters, reentrant checkpointing."""
    pytest.importorskip("peft")
    spec = _spec(tmp_path, tiny_model, "rrtf", RANK_ROWS, deepspeed="zero3", lora={"r": 4, "target_modules": ["c_attn"]},
                 config={"max_steps": 2, "per_device_train_batch_size": 2, "bf16": True, "gradient_checkpointing": True},
                 options={"max_length": 64, "model_init_kwargs": {"dtype": "bfloat16"}})
    metrics = run_torchrun(spec, nproc=torch.cuda.device_count(), timeout=600)
    _check_saved(spec.output_dir, metrics, steps=2)
    assert math.isfinite(metrics["last_rank_loss"])


# ---------------------------------------------------------------- slow tier: the starcoder-15b preset, 2 CPU ranks

# Seeds from the built-in task family (HumanEval seeds would be decontaminated against HumanEval, the eval).
STAND_IN = ["data.source=tasks", "data.n_train=4", "evolve.rounds=0", "data.n_heldout=2", "eval.limit=2", "eval.max_new_tokens=16",
            "eval.benchmarks=[humaneval]", "models.student.sample.n=2", "models.student.sample.max_new_tokens=16",
            "models.teachers.0.sample.n=2", "models.teachers.0.sample.max_new_tokens=16",
            "train.args.max_steps=3", "train.args.save_steps=1", "train.args.per_device_train_batch_size=1",
            "train.args.gradient_accumulation_steps=1", "train.args.logging_steps=1"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "ray"])
def test_starcoder_15b_stand_in_two_ranks_checkpoints_restarts_on_a_new_learning_rate_and_evaluates(
        tmp_path, monkeypatch, launcher):
    """`python -m align.recipes.rrtf --base starcoder-15b --stand-in train.launcher=...`: ZeRO-3 on 2 CPU
    ranks with a checkpoint per step; the rerun with another learning rate retrains from the start (it
    used to continue the old run's newest checkpoint); the saved model loads and the loop evaluates it."""
    import json

    from transformers import AutoModelForCausalLM

    from align.recipes import rrtf

    if launcher == "ray":
        pytest.importorskip("ray.train")
    monkeypatch.setenv("RRTF_STANDIN_CACHE", str(tmp_path / "standin"))
    run = tmp_path / "run"
    argv = ["--base", "starcoder-15b", "--stand-in", "--run-dir", str(run), *STAND_IN, f"train.launcher={launcher}"]
    rrtf.main(argv)
    out = run / "train" / "rrtf"
    first = json.loads((out / "metrics.json").read_text())
    assert first["global_step"] == 3 and first["resumed_from"] is None
    assert {"checkpoint-1", "checkpoint-2", "checkpoint-3"} <= {p.name for p in out.glob("checkpoint-*")}
    assert json.loads((out / "job-fingerprint.json").read_text())["world_size"] == 2
    result = rrtf.main([*argv, "train.args.learning_rate=1e-4"])
    second = json.loads((out / "metrics.json").read_text())
    assert second["resumed_from"] is None and second["global_step"] == 3    # not "continue from checkpoint-3"
    assert json.loads((out / "job.json").read_text())["config"]["learning_rate"] == 1e-4
    AutoModelForCausalLM.from_pretrained(out)
    assert result["benchmarks"]["humaneval"]["student_after"]["n_problems"] == 2
