"""--dry-run's time and memory estimate, and the plan/launch agreement on the world size.
Run: .venv/bin/python -m pytest tests/align/test_plan.py"""
from __future__ import annotations

import argparse

import pytest

from align.config_loader import ConfigError
from align.models import count_parameters, lookup
from align.plan import describe, estimate
from align.recipes import cli
from evol.seeds import load_source
from rank.records import write_jsonl


def _cfg(base="starcoder-15b", method="rrtf", *overrides):
    return cli.load_config(method, argparse.Namespace(base=base, config=[], overrides=list(overrides),
                                                      ray_address=None))


def test_pangu_coder2_scale_by_hand():
    """68K prompts, 8 responses each (4 student + 4 teacher), 500 tokens per sequence, 6 epochs."""
    cfg = _cfg()
    n = 15.5e9
    e = estimate(cfg, int(n), 6144, 40)
    assert (e.prompts, e.prompts_counted) == (68000, False)
    assert e.sample_tokens == 68000 * 8 * 300
    assert e.train_rows == 68000 * 8 and e.train_tokens == 68000 * 8 * 500
    assert e.steps == 133 * 6                                      # ceil(68000 / 512) per epoch
    assert e.train_flops == pytest.approx(6 * n * 68000 * 8 * 500 * 6)
    assert e.train_gpu_hours == pytest.approx(e.train_flops / (312e12 * 0.35) / 3600)
    assert e.train_hours == pytest.approx(e.train_gpu_hours / 8)
    assert e.sample_gpu_hours == pytest.approx(68000 * 8 * 300 / 2000 / 3600)
    # activations of one micro-batch: 4 prompts x 8 sequences x 500 tokens, 40 layers of width 6144
    sbh = 500 * 32 * 6144
    assert e.activation_gib == pytest.approx(sbh * 34 * 40 / 2**30)
    assert e.activation_ckpt_gib == pytest.approx((2 * sbh * 40 + 34 * sbh) / 2**30)
    assert e.activation_ckpt_gib < e.activation_gib / 10


def test_dpo_adds_the_reference_forward_and_counts_pairs():
    cfg = _cfg("starcoder-15b", "dpo")
    e = estimate(cfg, 10**9, 6144, 40)
    assert e.train_rows == 68000 * 2
    assert e.train_flops == pytest.approx(8 * 1e9 * 68000 * 2 * 500 * 1)
    assert e.steps == 133                                        # 68000 pairs / 512 per step, 1 epoch


def test_counts_prompts_from_data_on_disk_and_prints_the_figures(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", load_source("tasks", 10))
    cfg = _cfg("starcoder-15b", "rrtf", f"data.source={tmp_path}/p.jsonl")
    e = estimate(cfg, *((count_parameters(lookup("starcoder-15b"))[0],) + (6144, 40)))
    assert (e.prompts, e.prompts_counted) == (10, True)
    text = describe(_cfg())
    for line in ("prompts: 68,000", "sampling: 163.2M generated tokens", "optimizer steps", "6·N·tokens",
                 "GPU-hours", "with gradient checkpointing", "8 worker(s) = 512 prompts"):
        assert line in text, text


def test_plan_and_launch_world_size_must_agree():
    with pytest.raises(ConfigError, match="train.num_workers: 4 workers but .* 8 GPUs"):
        cli.check_names(_cfg("starcoder-15b", "rrtf", "train.num_workers=4"))
    cli.check_names(_cfg("starcoder-15b", "rrtf", "train.num_workers=16", "train.num_nodes=2"))
    with pytest.raises(ConfigError, match="inprocess runs 1 worker"):
        cli.check_names(_cfg("tiny", "rrtf", "train.num_workers=2"))
    cli.check_names(_cfg("tiny", "rrtf", "train.launcher=torchrun", "train.num_workers=2"))   # CPU: any count


def test_each_models_eval_gets_its_own_actor_with_its_backends_gpus(monkeypatch):
    """Issue 12 item 9 on CPU: the eval actor asks Ray for what the backend needs and is killed after."""
    import ray

    from align import fanout
    from align.recipes.loop_config import ModelSpec
    from align.recipes import rrtf

    started, killed = [], []

    class Actor:
        class run:
            @staticmethod
            def remote(problems, cfg, spec, path):
                return {"pass@1": 0.5, "model": spec.ref, "path": path}

    monkeypatch.setattr(fanout, "init_ray", lambda *a, **k: None)
    monkeypatch.setattr(fanout, "gpus_available", lambda: True)
    monkeypatch.setattr(fanout, "start_actors", lambda cls, args, n, res, **k: started.append((cls, n, res)) or [Actor])
    monkeypatch.setattr(ray, "get", lambda ref: ref)
    monkeypatch.setattr(ray, "kill", killed.append)
    cfg = _cfg()
    spec = ModelSpec("starcoder-15b", backend="vllm", options={"tensor_parallel_size": 2})
    assert rrtf.evaluate_in_actor([], cfg, spec, "/m")["path"] == "/m"
    (cls, n, res), = started
    assert cls is rrtf._EvalActor and n == 1 and res["num_gpus"] == 2
    assert killed == [Actor]
    started.clear()
    rrtf.evaluate_in_actor([], cfg, ModelSpec("x/y", backend="hf", options={"device": "cuda"}), "/m")
    assert started[0][2]["num_gpus"] == 1
