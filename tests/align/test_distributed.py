"""Training jobs in-process, under torchrun (2 CPU processes, gloo, DeepSpeed ZeRO-3) and on Ray Train.

    .venv/bin/python -m pytest tests/align/test_distributed.py            # fast tier + slow tier
    .venv/bin/python -m pytest tests/align/test_distributed.py -m "not slow"
"""
from __future__ import annotations

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


# ---------------------------------------------------------------- slow tier: 2 processes on CPU


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
