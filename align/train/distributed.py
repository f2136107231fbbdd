"""Run one training job (RRTF, RRHF, DPO or SFT) in-process, under torchrun, or as a Ray Train job.

A job is a JSON spec (`JobSpec`):

    {"method": "dpo", "model_path": "runs/x/model", "rows_path": "runs/x/dpo.jsonl",
     "output_dir": "runs/x/train", "config": {"max_steps": 100, "beta": 0.1}, "deepspeed": "zero3"}

    python -m align.train.distributed --spec spec.json                        # in this process
    python -m align.train.distributed --spec spec.json --torchrun 2           # = the line below
    torchrun --standalone --nproc_per_node 2 -m align.train.worker --spec spec.json
    python -m align.train.distributed --spec spec.json --ray 2                # local Ray, 2 workers
    python -m align.train.distributed --spec spec.json --ray 8 --ray-address auto --gpu

Every rank runs `run_job`, which calls the method's training function; the trainers (HF/TRL) pick up
the process group from torchrun's or Ray Train's environment. `config` passes straight through to the
method's config class (TRL's DPOConfig/SFTConfig, TrainingArguments for the ranking trainer). On CPU the
trainers get use_cpu=True and bf16=False, which is what lets DeepSpeed and accelerate agree on gloo with
2 processes (STACK-NOTES). Rank 0 writes `metrics.json` into output_dir; on a Ray cluster output_dir must
be on storage every node sees.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rank.plugins import suggest
from rank.records import write_atomic

PRESETS_DIR = Path(__file__).with_name("deepspeed")
REPO_ROOT = Path(__file__).resolve().parents[2]  # so workers import align without an installed package


def deepspeed_config(name_or_path: str | Path) -> str:
    """A preset name (zero2, zero3, zero3_offload) or a JSON file path -> the path of the JSON config."""
    preset = PRESETS_DIR / f"{name_or_path}.json"
    if preset.is_file():
        return str(preset)
    path = Path(name_or_path)
    if path.is_file():
        return str(path.resolve())
    names = sorted(p.stem for p in PRESETS_DIR.glob("*.json"))
    raise ValueError(f"deepspeed: {name_or_path!r} is neither a preset {names} nor a JSON file"
                     f"{suggest(str(name_or_path), names)}")


@dataclass
class JobSpec:
    method: str  # a key of METHODS
    model_path: str
    rows_path: str  # JSON Lines (or a JSON list) of training rows for the method
    output_dir: str
    config: dict[str, Any] = field(default_factory=dict)  # trainer config overrides, passed through
    deepspeed: str | None = None  # preset name or JSON path
    tokenizer_path: str | None = None  # defaults to model_path
    ref_model_path: str | None = None  # DPO only: a frozen reference other than the initial model
    lora: dict[str, Any] | None = None  # peft.LoraConfig(**lora); output_dir gets the merged model
    loss: dict[str, Any] = field(default_factory=dict)  # RankLossConfig fields; RRTF/RRHF
    options: dict[str, Any] = field(default_factory=dict)  # other keyword arguments of the method's function

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JobSpec":
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                raise ValueError(f"job spec: unknown key {key!r}{suggest(key, names)}")
        missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING and f.name not in data]
        if missing:
            raise ValueError(f"job spec: missing {missing}")
        spec = cls(**data)
        spec.check()
        return spec

    @classmethod
    def from_json(cls, path: str | Path) -> "JobSpec":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Every name and path, before any model loads."""
        if self.method not in METHODS:
            raise ValueError(f"job spec: unknown method {self.method!r}; one of {sorted(METHODS)}"
                             f"{suggest(self.method, METHODS)}")
        for name in ("model_path", "rows_path", "tokenizer_path", "ref_model_path"):
            value = getattr(self, name)
            if value is not None and not Path(value).exists():
                raise FileNotFoundError(f"job spec: {name} {value} does not exist")
        if self.deepspeed is not None:
            deepspeed_config(self.deepspeed)


def read_rows(path: str | Path) -> list[dict]:
    """Rows from JSON Lines, or from a JSON list; errors name the file and line."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not JSON: {err}") from None
    return rows


def _dpo(spec: JobSpec, rows: list[dict], config: dict) -> dict:
    from align.train.trl_train import train_dpo

    return train_dpo(spec.model_path, rows, spec.output_dir, config, spec.tokenizer_path, spec.ref_model_path,
                     spec.lora, **spec.options)


def _sft(spec: JobSpec, rows: list[dict], config: dict) -> dict:
    from align.train.trl_train import train_sft

    return train_sft(spec.model_path, rows, spec.output_dir, config, spec.tokenizer_path, spec.lora, **spec.options)


def _rank(spec: JobSpec, rows: list[dict], config: dict) -> dict:
    from align.train.losses import RankLossConfig
    from align.train.rank_trainer import train_rank

    loss = RankLossConfig(**{"loss": spec.method, **spec.loss})  # options: packing, max_length
    return train_rank(spec.model_path, rows, spec.output_dir, loss, config, spec.tokenizer_path, lora=spec.lora,
                      **spec.options)


METHODS: dict[str, Callable[[JobSpec, list[dict], dict], dict]] = {
    "dpo": _dpo, "sft": _sft, "rrtf": _rank, "rrhf": _rank,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(spec: JobSpec) -> dict[str, Any]:
    """Train on this process (one rank of whatever launched it); rank 0 writes output_dir/metrics.json."""
    config = dict(spec.config)
    if spec.deepspeed is not None:
        config["deepspeed"] = deepspeed_config(spec.deepspeed)
        # DeepSpeed always wants a process group; a plain `python` process is a world of one.
        for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                           "MASTER_ADDR": "127.0.0.1"}.items():
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    metrics = METHODS[spec.method](spec, read_rows(spec.rows_path), config)
    metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool, type(None)))}
    if int(os.environ.get("RANK", "0")) == 0:
        write_atomic(Path(spec.output_dir) / "metrics.json", json.dumps(metrics, indent=1))
    return metrics


def _write_spec(spec: JobSpec) -> Path:
    out = Path(spec.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)  # never report a previous run's metrics as this one's
    path = out / "job.json"
    write_atomic(path, json.dumps(spec.to_dict(), indent=1))
    return path


def _metrics(spec: JobSpec) -> dict[str, Any]:
    return json.loads((Path(spec.output_dir) / "metrics.json").read_text())


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def run_torchrun(spec: JobSpec, nproc: int, timeout: float | None = None) -> dict[str, Any]:
    """`torchrun --standalone --nproc_per_node nproc -m align.train.worker --spec <output_dir>/job.json`."""
    spec_path = _write_spec(spec)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "align.train.worker", "--spec", str(spec_path)]
    env = _env()
    # Each process on a CPU box gets its share of cores rather than oversubscribing them all.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    subprocess.run(cmd, env=env, check=True, timeout=timeout)
    return _metrics(spec)


def ray_train_loop(loop_config: dict[str, Any]) -> None:
    """The per-worker function of the Ray Train job: the same `run_job` torchrun's workers call."""
    run_job(JobSpec.from_dict(loop_config["spec"]))


def run_ray(spec: JobSpec, num_workers: int, address: str | None = None, use_gpu: bool = False) -> dict[str, Any]:
    """A Ray Train `TorchTrainer` with num_workers workers (gloo on CPU, NCCL on GPU).

    address=None starts a local Ray with num_workers CPUs; "auto" joins the running cluster, whose nodes
    must have this package installed (or get it from `ray job submit --working-dir .`).
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    spec_path = _write_spec(spec)
    started = not ray.is_initialized()
    if started and address is None:
        # "local" starts a private instance even where another user's `ray start` cluster is running.
        ray.init(address="local", num_cpus=num_workers, include_dashboard=False,
                 runtime_env={"env_vars": {"PYTHONPATH": _env()["PYTHONPATH"], "OMP_NUM_THREADS": "1"}})
    elif started:
        ray.init(address=address)
    try:
        trainer = TorchTrainer(
            ray_train_loop,
            train_loop_config={"spec": spec.to_dict()},
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            run_config=RunConfig(name=Path(spec.output_dir).name, storage_path=str(spec_path.parent.resolve() / "ray")),
        )
        trainer.fit()
    finally:
        if started:
            ray.shutdown()
    return _metrics(spec)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", required=True, help="job spec JSON")
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--torchrun", type=int, metavar="N", help="launch N processes with torchrun")
    how.add_argument("--ray", type=int, metavar="N", help="a Ray Train job with N workers")
    ap.add_argument("--ray-address", default=None, help="'auto' to join a running Ray cluster")
    ap.add_argument("--gpu", action="store_true", help="Ray workers take one GPU each")
    args = ap.parse_args(argv)
    spec = JobSpec.from_json(args.spec)
    if args.torchrun:
        metrics = run_torchrun(spec, args.torchrun)
    elif args.ray:
        metrics = run_ray(spec, args.ray, args.ray_address, args.gpu)
    else:
        metrics = run_job(spec)
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
