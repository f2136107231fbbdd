"""The training part of a recipe's config, typed once and without torch: loss options, trainer options.

    train:
      loss: rrtf                      # align.train.losses.LOSSES (rank methods)
      loss_args: {tie_margin: 0.5}    # RankLossArgs below: checked when the config loads
      max_length: 2048                # tokens per (prompt, response); the one home of TRL's max_length too
      args: {learning_rate: 2e-5}     # transformers.TrainingArguments: every method
      trl: {beta: 0.1}                # only the fields DPOConfig/SFTConfig add to TrainingArguments

`trainer_options(train, method)` is the one place that merges `args`, `trl` and `max_length` into the
keyword arguments of the method's trainer config; `check_train(train, method)` refuses at load time a key
set in two homes, a TrainingArguments field under `trl`, an unknown key, or a bad dataset option.
Test: `pytest tests/align/test_train_config.py`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

RANK_METHODS = ("rrtf", "rrhf")
RANK_REDUCTIONS = ("pair", "prompt", "sum")
FT_REDUCTIONS = ("token", "response")
TRL_CONFIGS = {"dpo": "DPOConfig", "sft": "SFTConfig"}
DEFAULT_RANK_MAX_LENGTH = 1024


@dataclass
class RankLossArgs:
    """`train.loss_args`: how the ranking loss is weighed and reduced (align/train/losses.py docstring)."""

    rank_weight: float = 1.0
    ft_weight: float = 1.0
    tie_margin: float = 0.5            # RRTF gap given to a teacher/student tie
    length_norm: bool = True           # p = sum log P / |y| (True, both papers) or the plain sum
    rank_reduction: str = "pair"       # "pair" | "prompt" | "sum"
    ft_reduction: str = "token"        # "token" | "response"
    ft_min_score: float | None = None  # fine-tune only on targets scoring >= this (None: always, as the papers)

    def __post_init__(self):
        if self.rank_reduction not in RANK_REDUCTIONS:
            raise ValueError(f"rank_reduction={self.rank_reduction!r}: expected one of {RANK_REDUCTIONS}")
        if self.ft_reduction not in FT_REDUCTIONS:
            raise ValueError(f"ft_reduction={self.ft_reduction!r}: expected one of {FT_REDUCTIONS}")
        if self.tie_margin < 0:
            raise ValueError(f"tie_margin must be >= 0, got {self.tie_margin}")


@dataclass
class RankLossConfig(RankLossArgs):
    """What the ranking trainer minimises: `loss = rank_weight * rank_loss + ft_weight * ft_loss`."""

    loss: str = "rrtf"                 # a key of losses.LOSSES (or "package.module:function")


def rank_loss_config(loss: str, args: RankLossArgs | dict | None = None) -> RankLossConfig:
    """`RankLossConfig` from the loss name and `train.loss_args` (a RankLossArgs or its fields as a dict)."""
    fields = dataclasses.asdict(args) if isinstance(args, RankLossArgs) else dict(args or {})
    if fields.pop("loss", loss) != loss:
        raise ValueError(f"loss_args names loss {args['loss']!r} but the loss is {loss!r}")
    return RankLossConfig(loss=loss, **fields)


def _training_argument_names() -> set[str]:
    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments)}


def trainer_options(train: Any, method: str) -> dict[str, Any]:
    """The keyword arguments of the method's trainer config (TrainingArguments, DPOConfig, SFTConfig).

    `train.args` and `train.trl` never share a key (check_train refuses it); `train.max_length` becomes
    TRL's `max_length` for dpo/sft (the rank methods get it as a collator option instead).
    """
    both = sorted(set(train.args) & set(train.trl))
    if both:
        raise ValueError(f"train.args and train.trl both set {both}: give each option one home")
    options = {**train.args, **train.trl}
    if method not in RANK_METHODS and train.max_length is not None:
        if "max_length" in train.trl:
            raise ValueError("train.trl.max_length: set train.max_length instead (its one home)")
        options["max_length"] = train.max_length
    if train.model_init_kwargs and method not in RANK_METHODS:
        options["model_init_kwargs"] = dict(train.model_init_kwargs)
    return options


def rank_max_length(train: Any) -> int:
    return DEFAULT_RANK_MAX_LENGTH if train.max_length is None else train.max_length


def check_train(train: Any, method: str) -> None:
    """Every training option of a loaded config, before anything trains (ValueError naming the key)."""
    from align.config_loader import check_keys
    from align.train.datasets import check_builder_args

    if train.max_length is not None and train.max_length < 4:
        raise ValueError(f"train.max_length must be >= 4, got {train.max_length}")
    if method not in RANK_METHODS and train.layout != "auto":
        raise ValueError(f"train.layout={train.layout!r} applies to rrtf/rrhf only, not {method}")
    check_builder_args(train.dataset or method, train.dataset_args)
    trainer_options(train, method)      # two homes for one key
    if train.args:
        from transformers import TrainingArguments
        check_keys(TrainingArguments, train.args, "train.args")
    if train.trl:
        if method not in TRL_CONFIGS:
            raise ValueError(f"train.trl: only the dpo and sft methods use TRL's configs, not {method!r}")
        import trl
        check_keys(getattr(trl, TRL_CONFIGS[method]), train.trl, "train.trl")
        shared = sorted(set(train.trl) & _training_argument_names())
        if shared:
            raise ValueError(f"train.trl: {shared} are TrainingArguments fields; set them under train.args "
                             f"(their one home, shared by every method)")
    if method == "dpo" and train.trl.get("precompute_ref_log_probs") and train.num_workers > 1 \
            and _zero_stage(train.deepspeed) == 3:
        # TRL's precompute pass runs the DeepSpeed engine outside training; ZeRO-3's parameter trace then
        # fails on the first step ("pop from an empty deque", the starcoder-15b DPO preset on 2 CPU ranks).
        raise ValueError("train.trl.precompute_ref_log_probs fails under ZeRO-3 on more than one rank "
                         "(DeepSpeed's parameter trace); leave it false (the reference model stays in the "
                         "loop) or train with zero2")
    if train.lora:
        from peft import LoraConfig
        check_keys(LoraConfig, train.lora, "train.lora")


def _zero_stage(deepspeed: str | None) -> int:
    """The ZeRO stage of train.deepspeed (a preset name or a JSON path); 0 without DeepSpeed."""
    if not deepspeed:
        return 0
    import json

    from align.train.distributed import deepspeed_config

    return int(json.loads(open(deepspeed_config(deepspeed)).read()).get("zero_optimization", {}).get("stage", 0))
