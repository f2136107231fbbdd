"""The typed config of the loop recipes (rrtf, dpo, sft): one dataclass per stage.

YAML presets live in `recipes/<base>/<method>.yaml`; every field here can be set there or on
the command line as `section.key=value`. Pass-through mappings (`train.args`, `train.trl`,
`tiny`) are checked against the target library's own dataclass before anything loads.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from align.train.config import RankLossArgs


@dataclass
class SamplingConfig:
    n: int = 4
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 128
    seed: int = 0


@dataclass
class ModelSpec:
    """One model of a run (the student or a teacher). In YAML a plain string means {ref: string}."""
    SHORTHAND: ClassVar[str] = "ref"
    ref: str = ""                    # registry name (align.models), hub id or local path
    backend: str = "hf"              # hf | vllm | openai (align.generate) or package.module:Class
    template: str = "pangu"          # pangu | alpaca | chat | completion (align.templates) or package.module:name
    sample: SamplingConfig = field(default_factory=SamplingConfig)   # this model's sampling, n included
    options: dict[str, Any] = field(default_factory=dict)   # backend options (batch_size, dtype, base_url, ...)
    replicas: int = 1                # generation actors for this model

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")


@dataclass
class ModelsConfig:
    # "tiny:student"/"tiny:teacher" are registry entries that build themselves (align.tiny).
    student: ModelSpec = field(default_factory=lambda: ModelSpec("tiny:student"))
    teachers: list[ModelSpec] = field(default_factory=lambda: [ModelSpec("tiny:teacher")])


@dataclass
class DataConfig:
    source: str = "tasks"            # evol.seeds.load_source: tasks | humaneval[:PATH] | mbpp:PATH[@split] |
                                     # FILE.jsonl | FILE.parquet | hf:NAME[:SPLIT]
    limit: int | None = None         # the first N problems of the source (tasks: default n_train)
    fields: dict[str, str] = field(default_factory=dict)   # our field -> the table's column, e.g. {prompt: question}
    n_train: int = 200               # seed problems from the built-in family (source: tasks)
    n_heldout: int = 50              # held-out built-in problems for eval
    min_depth: int = 1
    max_depth: int = 3
    seed: int = 0
    # Benchmarks whose test problems are removed from the problems (evol.decontam specs); None =
    # HumanEval plus the run's eval benchmarks. Report: decontamination.json.
    decontaminate: list[str] | None = None
    dedup_threshold: float = 0.7     # MinHash/Jaccard near-duplicate threshold among evolved problems

    def __post_init__(self) -> None:
        if not 0 < self.dedup_threshold <= 1:
            raise ValueError(f"dedup_threshold must be in (0, 1], got {self.dedup_threshold}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")


@dataclass
class EvolveConfig:
    rounds: int = 1
    operators: list[str] | None = None   # None = every built-in Evol-Instruct operator (evol.evolve.OPERATORS)
    seed: int = 0
    # The model that evolves problems which are not built-in tasks: "student", "teachers[0]", the ref of
    # one of the run's models, or an entry of its own ({ref, backend: openai, options: {base_url}, ...}).
    model: ModelSpec | None = None
    framing: str = "wizardcoder"         # wizardcoder | contest (PanGu-Coder2 §3.2): evol.llm_evolve.FRAMINGS
    agreement_samples: int = 0           # solutions sampled per evolved problem for CodeT agreement (0 = off)

    def __post_init__(self) -> None:
        if self.agreement_samples < 0:
            raise ValueError(f"agreement_samples must be >= 0, got {self.agreement_samples}")


@dataclass
class SampleConfig:
    shard_size: int = 64             # problems per resumable shard (per model)
    include_reference: bool = False  # add each problem's reference solution as a teacher response


@dataclass
class ExecuteConfig:
    workers: int = 4                 # sandboxes per Ray task; 2 per core keeps the cores busy
    timeout_s: float = 5.0
    shard_size: int = 256            # candidates per Ray task / resumable shard
    unsafe: bool = False             # run without bubblewrap (warns on every run)


@dataclass
class RankConfig:
    strategy: str = "pangu"          # rank.strategies, or package.module:function; the one trained on
    # More strategies ranking the same verdicts: each writes ranked-<name>.jsonl, and all of them
    # (with `strategy`) are compared in rank-agreement.json/.md (rank.agreement).
    strategies: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    loss: str = "rrtf"               # rrtf | rrhf (align.train.losses) for the rank recipes
    dataset: str | None = None       # training-set builder (align.train.datasets.BUILDERS); None = the method's
    dataset_args: dict[str, Any] = field(default_factory=dict)  # builder options, e.g. {pairing: best_vs_worst}
    init_from: str | None = None     # start from another method's output in this run dir (e.g. "sft"), or a path
    loss_args: RankLossArgs = field(default_factory=RankLossArgs)   # align.train.config (no torch)
    max_length: int | None = None    # tokens per (prompt, response); None: 1024 (rrtf/rrhf), TRL's default (dpo/sft)
    args: dict[str, Any] = field(default_factory=dict)        # -> transformers.TrainingArguments (every method)
    trl: dict[str, Any] = field(default_factory=dict)         # -> only the fields trl.DPOConfig/SFTConfig add
    lora: dict[str, Any] | None = None                        # -> peft.LoraConfig
    model_init_kwargs: dict[str, Any] = field(default_factory=dict)  # -> from_pretrained (dtype, attn_implementation)
    # rrtf/rrhf: how the k responses share their prompt (align/train/packing.py); auto = decided by a probe
    layout: Literal["auto", "prefix", "packed", "naive"] = "auto"
    deepspeed: str | None = None     # zero2 | zero3 | zero3_offload | path to a JSON
    launcher: Literal["inprocess", "torchrun", "ray"] = "inprocess"
    num_workers: int = 1             # processes (torchrun) or workers (Ray Train): the data-parallel world size
    num_gpus_per_node: int = 0       # 0: train on CPU; else one GPU per worker (num_workers = this x num_nodes)
    num_nodes: int = 1


@dataclass
class EvalConfig:
    max_new_tokens: int = 128
    # Suites besides the held-out tasks, as data.source strings. None: HumanEval and MBPP's test
    # split for a registry base (MBPP from data.source's file when it is MBPP, else the hub's
    # `mbpp`), none for the tiny models.
    benchmarks: list[str] | None = None
    limit: int | None = None         # the first N problems of each benchmark (quick checks, CI)
    n: int = 1                       # samples per problem; 1 = greedy pass@1
    temperature: float = 0.8         # when n > 1
    k: list[int] = field(default_factory=lambda: [1])   # pass@k reported (each k <= n)

    def __post_init__(self) -> None:
        if self.n < 1 or not self.k or min(self.k) < 1 or max(self.k) > self.n:
            raise ValueError(f"need n >= 1 and 1 <= k <= n for every k, got n={self.n}, k={self.k}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")


@dataclass
class PlanConfig:
    """The assumptions of --dry-run's time estimate (printed beside it; change them to your setup)."""
    prompts: int = 68000             # problems sampled when data.source is not on disk (PanGu-Coder2's 68K,
                                     # arXiv:2307.14936 §4.1); a file on disk is counted instead
    prompt_tokens: int = 200         # mean tokens per prompt
    response_tokens: int = 300       # mean tokens per response (each model stops before max_new_tokens)
    gpu: str = "A100-80GB"
    peak_tflops: float = 312.0       # dense bf16 peak of that GPU (A100: 312)
    mfu: float = 0.35                # model FLOPs utilisation reached in training
    sample_tokens_per_s_per_gpu: float = 2000.0   # generated tokens/s per GPU (vLLM batch decoding)


@dataclass
class LoopConfig:
    """Iterative rounds: after round r trains, round r+1 samples the trained student again (the teachers'
    samples stay), executes, ranks and trains (Code Llama's rejection-sampling rounds; SFT-then-DPO is
    train.init_from). Round k > 1 lives in <run>/round-<k>/."""
    rounds: int = 1
    init: Literal["trained", "base"] = "trained"   # round k > 1 trains from round k-1's weights, or the base student

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")


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
    loop: LoopConfig = field(default_factory=LoopConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
