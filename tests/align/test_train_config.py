"""The training part of a recipe's config (align/train/config.py): typed once, one home per option.

    .venv/bin/python -m pytest tests/align/test_train_config.py
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from align.config_loader import ConfigError, load
from align.recipes.loop_config import RunConfig, TrainConfig
from align.recipes.cli import RECIPES, check_passthrough
from align.train.config import RankLossArgs, RankLossConfig, check_train, rank_loss_config, trainer_options

ROOT = Path(__file__).resolve().parents[2]


def _load(base: str, method: str, *overrides: str) -> RunConfig:
    cfg = load(RunConfig, [RECIPES / base / f"{method}.yaml"], list(overrides))
    check_passthrough(cfg)
    return cfg


def test_loss_args_are_typed_when_the_config_loads():
    cfg = _load("tiny", "rrtf", "train.loss_args.tie_margin=0.25", "train.loss=rrhf")
    assert cfg.train.loss_args == RankLossArgs(tie_margin=0.25)
    assert rank_loss_config(cfg.train.loss, cfg.train.loss_args) == RankLossConfig(loss="rrhf", tie_margin=0.25)
    with pytest.raises(ConfigError, match="tie_margin.*>= 0"):
        _load("tiny", "rrtf", "train.loss_args.tie_margin=-1")
    with pytest.raises(ConfigError, match="did you mean 'rank_reduction'"):
        _load("tiny", "rrtf", "train.loss_args.rank_reductio=pair")
    with pytest.raises(ConfigError, match="rank_reduction"):
        _load("tiny", "rrtf", "train.loss_args.rank_reduction=mean")


def test_the_loss_config_lives_in_a_module_without_torch():
    code = ("import sys; from align.recipes.cli import RECIPES; from align.config_loader import load;"
            "from align.recipes.loop_config import RunConfig;"
            "cfg = load(RunConfig, [RECIPES / 'tiny/rrtf.yaml'], ['train.loss_args.ft_weight=0.5']);"
            "from align.train.config import rank_loss_config; rank_loss_config('rrtf', cfg.train.loss_args);"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_args_and_trl_have_one_home_each():
    # A key in both places used to be resolved silently in favour of trl (starcoder-15b/dpo.yaml's learning_rate).
    with pytest.raises(ConfigError, match=r"both set \['learning_rate'\]"):
        _load("starcoder-15b", "dpo", "train.trl.learning_rate=1e-6")
    with pytest.raises(ConfigError, match=r"\['warmup_steps'\] are TrainingArguments fields"):
        _load("tiny", "dpo", "train.trl.warmup_steps=3")
    with pytest.raises(ConfigError, match="train.max_length instead"):
        _load("tiny", "dpo", "train.trl.max_length=128")
    with pytest.raises(ConfigError, match="only the dpo and sft methods"):
        _load("tiny", "rrtf", "train.trl.beta=0.1")
    dpo = _load("starcoder-15b", "dpo").train
    options = trainer_options(dpo, "dpo")
    assert options["learning_rate"] == 5e-7 and options["beta"] == 0.1 and options["max_length"] == 2048
    assert options["model_init_kwargs"] == {"dtype": "bfloat16", "attn_implementation": "sdpa"}


def test_max_length_is_settable_for_the_rank_methods():
    from align.train.launch import job_spec

    train = _load("tiny", "rrtf", "train.max_length=512").train
    rows = ROOT / "pyproject.toml"   # any existing file: the spec only checks that it exists
    spec = job_spec(train, "rrtf", str(ROOT), rows, "/tmp/out")
    assert spec.options["max_length"] == 512 and "max_length" not in spec.config
    assert job_spec(TrainConfig(), "rrtf", str(ROOT), rows, "/tmp/out").options["max_length"] == 1024
    with pytest.raises(ConfigError, match="max_length must be >= 4"):
        _load("tiny", "rrtf", "train.max_length=2")


def test_dataset_args_are_validated_when_the_config_loads():
    with pytest.raises(ConfigError, match="min_gap must be >= 0"):
        _load("tiny", "dpo", "train.dataset_args.min_gap=-0.5")
    with pytest.raises(ConfigError, match="did you mean 'pairing'"):
        _load("tiny", "dpo", "train.dataset_args.pairng=all_pairs")
    check_train(_load("tiny", "dpo", "train.dataset_args.min_gap=0.5").train, "dpo")


def test_precomputed_reference_under_zero3_on_several_ranks_is_refused_at_load():
    """TRL's precompute pass breaks ZeRO-3's parameter trace on 2 ranks ("pop from an empty deque" in
    DeepSpeed, seen with this preset on CPU); ZeRO-2 and a single rank are left alone."""
    with pytest.raises(ConfigError, match="precompute_ref_log_probs fails under ZeRO-3"):
        _load("starcoder-15b", "dpo", "train.trl.precompute_ref_log_probs=true")
    for ok in (["train.deepspeed=zero2"], ["train.num_workers=1", "train.num_gpus_per_node=1"]):
        _load("starcoder-15b", "dpo", "train.trl.precompute_ref_log_probs=true", *ok)
