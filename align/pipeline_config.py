"""The typed config of the loop recipes (rrtf, dpo, sft): one dataclass per stage.

YAML presets live in `recipes/<base>/<method>.yaml`; every field here can be set there or on
the command line as `section.key=value`. Pass-through mappings (`train.args`, `train.trl`,
`tiny`) are checked against the target library's own dataclass before anything loads.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class ModelsConfig:
    # A registry name (align.models), a hub id or a local path; "tiny:student"/"tiny:teacher" are
    # the embedded CPU models built by align.tiny.
    student: str = "tiny:student"
    teachers: list[str] = field(default_factory=lambda: ["tiny:teacher"])


@dataclass
class DataConfig:
    source: str = "tasks"            # "tasks" (built-in family), "humaneval:PATH", "mbpp:PATH" or a Problem JSONL path
    n_train: int = 200               # seed problems from the built-in family (ignored for files)
    n_heldout: int = 50              # held-out built-in problems for eval
    min_depth: int = 1
    max_depth: int = 3
    seed: int = 0


@dataclass
class EvolveConfig:
    rounds: int = 1
    operators: list[str] | None = None   # None = every built-in Evol-Instruct operator
    seed: int = 0


@dataclass
class SamplingConfig:
    n: int = 4
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 128
    seed: int = 0


@dataclass
class SampleConfig:
    backend: str = "hf"              # align.generate backends, or package.module:Class
    batch_size: int = 16
    shard_size: int = 64             # problems per resumable shard
    replicas: int = 1                # generation actors per model
    student: SamplingConfig = field(default_factory=SamplingConfig)
    teacher: SamplingConfig = field(default_factory=SamplingConfig)


@dataclass
class ExecuteConfig:
    workers: int = 4                 # sandboxes per Ray task; 2 per core keeps the cores busy
    timeout_s: float = 5.0
    shard_size: int = 256            # candidates per Ray task / resumable shard
    unsafe: bool = False             # run without bubblewrap (warns on every run)


@dataclass
class RankConfig:
    strategy: str = "pangu"          # rank.strategies, or package.module:function


@dataclass
class TrainConfig:
    loss: str = "rrtf"               # rrtf | rrhf (align.train.losses) for the rank recipes
    dataset: str | None = None       # training-set builder (align.train.datasets.BUILDERS); None = the method's
    dataset_args: dict[str, Any] = field(default_factory=dict)  # builder options, e.g. {pairing: best_vs_worst}
    init_from: str | None = None     # start from another method's output in this run dir (e.g. "sft"), or a path
    loss_args: dict[str, Any] = field(default_factory=dict)   # -> align.train.losses.RankLossConfig
    args: dict[str, Any] = field(default_factory=dict)        # -> transformers.TrainingArguments
    trl: dict[str, Any] = field(default_factory=dict)         # -> trl.DPOConfig / trl.SFTConfig
    lora: dict[str, Any] | None = None                        # -> peft.LoraConfig
    model_init_kwargs: dict[str, Any] = field(default_factory=dict)  # -> from_pretrained (dtype, attn_implementation)
    # rrtf/rrhf: how the k responses share their prompt (align/train/packing.py); auto = decided by a probe
    layout: Literal["auto", "prefix", "packed", "naive"] = "auto"
    deepspeed: str | None = None     # zero2 | zero3 | zero3_offload | path to a JSON
    launcher: Literal["inprocess", "torchrun", "ray"] = "inprocess"
    num_workers: int = 1             # processes (torchrun) or workers (Ray Train)
    num_gpus_per_node: int = 8       # for --dry-run's memory estimate
    num_nodes: int = 1


@dataclass
class EvalConfig:
    max_new_tokens: int = 128
    benchmarks: list[str] = field(default_factory=list)  # extra suites: "humaneval:PATH", "mbpp:PATH@test", JSONL


@dataclass
class RunConfig:
    name: str = "tiny"
    base: str = "tiny"
    method: str = "rrtf"
    ray_address: str | None = None   # None: start Ray on this machine; "auto": join a cluster
    num_cpus: int | None = None      # CPUs Ray may use locally (None = all)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    tiny: dict[str, Any] = field(default_factory=dict)       # -> align.tiny.TinyConfig
    data: DataConfig = field(default_factory=DataConfig)
    evolve: EvolveConfig = field(default_factory=EvolveConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    execute: ExecuteConfig = field(default_factory=ExecuteConfig)
    rank: RankConfig = field(default_factory=RankConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
