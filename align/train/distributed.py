"""Run one training job (RRTF, RRHF, DPO or SFT) in-process, under torchrun, or as a Ray Train job.

A job is a JSON spec (`JobSpec`):

    {"method": "dpo", "model_path": "/data/runs/x/model", "rows_path": "/data/runs/x/dpo.jsonl",
     "output_dir": "/data/runs/x/train", "config": {"max_steps": 100, "beta": 0.1}, "deepspeed": "zero3"}

Every path in a spec is absolute (Ray Train V2 runs each worker in its own working directory); a model
may also be a hub id (`bigcode/starcoder`), which every worker loads itself (from its node's HF cache).
`launch(spec, launcher, ...)` is the driver's entry: it resumes output_dir's newest checkpoint only when
that checkpoint was written under the same job fingerprint (method, model, rows, every option except the
run length, world size), and removes the others.

    python -m align.train.distributed --spec spec.json                        # in this process
    python -m align.train.distributed --spec spec.json --torchrun 2           # = the line below
    torchrun --standalone --nproc_per_node 2 -m align.train.worker --spec spec.json
    python -m align.train.distributed --spec spec.json --ray 2                # local Ray, 2 workers
    python -m align.train.distributed --spec spec.json --ray 8 --ray-address auto --gpu

Every rank runs `run_job`, which calls the method's training function; the trainers (HF/TRL) pick up
the process group from torchrun's or Ray Train's environment. With more than one node (torchrun on
`num_nodes` > 1 with MASTER_ADDR/MASTER_PORT, or a Ray cluster) output_dir must be on storage every
node mounts at the same path: each Ray worker checks that it sees the file the driver wrote there
first. `config` passes straight through to the method's config class (TRL's DPOConfig/SFTConfig,
TrainingArguments for the ranking trainer). On CPU the trainers get use_cpu=True and bf16=False, which
is what lets DeepSpeed and accelerate agree on gloo with 2 processes (docs/design.md §12). Rank 0
writes `metrics.json` into output_dir.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from align.rundir import file_hash
from rank.plugins import suggest
from rank.records import write_atomic
from rank.typed import FieldError, build

log = logging.getLogger(__name__)
PRESETS_DIR = Path(__file__).with_name("deepspeed")
REPO_ROOT = Path(__file__).resolve().parents[2]  # so workers import align without an installed package
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")   # "gpt2", "bigcode/starcoder"
MODEL_FIELDS = ("model_path", "tokenizer_path", "ref_model_path")   # a local directory or a hub id
PATH_FIELDS = ("rows_path", "output_dir")                             # always local (shared) paths
# Options that only say how long to run, log or save: changing them continues a run rather than starting one.
RUN_LENGTH_OPTIONS = frozenset({"max_steps", "num_train_epochs", "save_steps", "save_strategy", "save_total_limit",
                                "logging_steps", "logging_strategy", "report_to", "resume_from_checkpoint",
                                "logging_dir", "dataloader_num_workers"})
FINGERPRINT_FILE = "job-fingerprint.json"


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
    def from_dict(cls, data: dict[str, Any], check: bool = True) -> "JobSpec":
        try:
            spec = build(cls, data)     # rank.typed: unknown key (with a suggestion), missing field, types
        except FieldError as e:
            raise ValueError(f"job spec: {e}") from None
        if check:
            spec.check()
        return spec

    @classmethod
    def from_json(cls, path: str | Path) -> "JobSpec":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Every name and path, before any model loads: paths absolute and present, models a path or hub id."""
        if self.method not in METHODS:
            raise ValueError(f"job spec: unknown method {self.method!r}; one of {sorted(METHODS)}"
                             f"{suggest(self.method, METHODS)}")
        for name in (*MODEL_FIELDS, *PATH_FIELDS):
            value = getattr(self, name)
            if value is None or (name in MODEL_FIELDS and not Path(value).is_absolute() and HUB_ID.match(value)
                                 and not Path(value).exists()):
                continue   # a hub id: each worker loads it (`resolved` turns a local relative path absolute)
            if not Path(value).is_absolute():
                raise ValueError(f"job spec: {name} {value!r} is relative; every path in a spec is absolute "
                                 f"(workers may run in another directory)")
            if name != "output_dir" and not Path(value).exists():
                raise FileNotFoundError(f"job spec: {name} {value} does not exist on {socket.gethostname()}")
        if self.deepspeed is not None:
            deepspeed_config(self.deepspeed)

    def resolved(self) -> "JobSpec":
        """A copy with every local path absolute (resolved against this process's directory) and the
        DeepSpeed config a preset name or an absolute path; hub ids stay as they are."""
        out = dataclasses.replace(self)
        for name in (*MODEL_FIELDS, *PATH_FIELDS):
            value = getattr(self, name)
            if value is not None and (name in PATH_FIELDS or Path(value).exists() or not HUB_ID.match(value)):
                setattr(out, name, str(Path(value).expanduser().resolve()))
        if self.deepspeed is not None:
            preset = PRESETS_DIR / f"{self.deepspeed}.json"
            out.deepspeed = self.deepspeed if preset.is_file() else str(Path(self.deepspeed).resolve())
        out.check()
        return out

    def fingerprint(self, world_size: int) -> str:
        """What a checkpoint of this job depends on: everything but the run length and output_dir, the
        rows' content, and the world size (a ZeRO checkpoint is sharded per rank)."""
        data = self.to_dict()
        data.pop("output_dir")
        data["config"] = {k: v for k, v in self.config.items() if k not in RUN_LENGTH_OPTIONS}
        data["rows"] = file_hash(self.rows_path)
        data["world_size"] = world_size
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
    from align.train.config import rank_loss_config
    from align.train.rank_trainer import train_rank

    loss = rank_loss_config(spec.loss.get("loss", spec.method), spec.loss)  # options: packing, max_length
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


def prepare_output(spec: JobSpec, world_size: int) -> list[str]:
    """On the driver, before any rank starts: keep output_dir's checkpoints only if they were written under
    this job's fingerprint (else a rerun with a new learning rate would silently continue the old run);
    returns the names of the checkpoints removed."""
    out = Path(spec.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)  # never report a previous run's metrics as this one's
    fp = spec.fingerprint(world_size)
    marker = out / FINGERPRINT_FILE
    old = json.loads(marker.read_text()).get("fingerprint") if marker.is_file() else None
    removed = []
    if old != fp:
        for ckpt in sorted(out.glob("checkpoint-*")):
            if ckpt.is_dir():
                shutil.rmtree(ckpt)
                removed.append(ckpt.name)
        if removed:
            log.warning("%s: removed %s, written under another job (fingerprint %s, now %s)",
                        out, ", ".join(removed), old, fp)
    write_atomic(marker, json.dumps({"fingerprint": fp, "world_size": world_size}))
    return removed


def _write_spec(spec: JobSpec) -> Path:
    path = Path(spec.output_dir) / "job.json"
    write_atomic(path, json.dumps(spec.to_dict(), indent=1))
    return path


def _metrics(spec: JobSpec) -> dict[str, Any]:
    return json.loads((Path(spec.output_dir) / "metrics.json").read_text())


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def torchrun_command(spec_path: str | Path, nproc: int, num_nodes: int = 1,
                     env: dict[str, str] | None = None) -> list[str]:
    """The torchrun command line: `--standalone` on one node; on `num_nodes` > 1 a c10d rendezvous at
    MASTER_ADDR:MASTER_PORT (node 0, as a cluster scheduler sets them), the same command on every node."""
    env = os.environ if env is None else env
    if num_nodes == 1:
        where = ["--standalone"]
    else:
        if not (env.get("MASTER_ADDR") and env.get("MASTER_PORT")):
            raise ValueError(f"torchrun on {num_nodes} nodes needs MASTER_ADDR and MASTER_PORT (node 0's address), "
                             f"and this command started on every node; or use launcher: ray")
        rdzv_id = hashlib.sha256(str(spec_path).encode()).hexdigest()[:12]
        where = [f"--nnodes={num_nodes}", "--rdzv-backend=c10d",
                 f"--rdzv-endpoint={env['MASTER_ADDR']}:{env['MASTER_PORT']}", f"--rdzv-id={rdzv_id}"]
    return [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc_per_node={nproc}",
            "-m", "align.train.worker", "--spec", str(spec_path)]


def run_torchrun(spec: JobSpec, nproc: int, timeout: float | None = None, num_nodes: int = 1) -> dict[str, Any]:
    """`torchrun --standalone --nproc_per_node nproc -m align.train.worker --spec <output_dir>/job.json`
    (nproc per node; see torchrun_command for num_nodes > 1)."""
    spec_path = _write_spec(spec)
    cmd = torchrun_command(spec_path, nproc, num_nodes)
    if num_nodes > 1:
        log.warning("torchrun on %d nodes: run this same command on every other node:\n  %s", num_nodes,
                    " ".join(cmd))
    env = _env()
    # Each process on a CPU box gets its share of cores rather than oversubscribing them all.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    subprocess.run(cmd, env=env, check=True, timeout=timeout)
    return _metrics(spec)


def check_shared_storage(output_dir: str, token: str) -> None:
    """On a worker: the file the driver wrote into output_dir must be visible here, or this node does not
    share the driver's storage (ZeRO-3 shards, the final model and metrics would be scattered over nodes)."""
    if not (Path(output_dir) / f".driver-{token}").is_file():
        raise RuntimeError(f"node {socket.gethostname()}: the driver's output_dir {output_dir} is not visible "
                           f"here. On a Ray cluster put the run directory on storage every node mounts at the "
                           f"same path (NFS, Lustre, a FUSE-mounted bucket)")


def ray_train_loop(loop_config: dict[str, Any]) -> None:
    """The per-worker function of the Ray Train job: the same `run_job` torchrun's workers call, after
    checking that this worker sees the driver's storage."""
    data = loop_config["spec"]
    check_shared_storage(data["output_dir"], loop_config["token"])
    run_job(JobSpec.from_dict(data))


def run_ray(spec: JobSpec, num_workers: int, address: str | None = None,
            use_gpu: bool | None = False) -> dict[str, Any]:
    """A Ray Train `TorchTrainer` with num_workers workers (gloo on CPU, NCCL on GPU).

    address=None starts a local Ray with num_workers CPUs; "auto" joins the running cluster, whose nodes
    must have this package installed (or get it from `ray job submit --working-dir .`) and share the
    storage output_dir is on (each worker checks it before training). use_gpu=None: one GPU per worker
    if the cluster has GPUs; on a cluster without any that is an error, on this machine a logged CPU run.
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    spec_path = _write_spec(spec)
    token = os.urandom(8).hex()
    marker = Path(spec.output_dir) / f".driver-{token}"
    write_atomic(marker, socket.gethostname())
    started = not ray.is_initialized()
    if started and address is None:
        # "local" starts a private instance even where another user's `ray start` cluster is running.
        ray.init(address="local", num_cpus=num_workers, include_dashboard=False,
                 runtime_env={"env_vars": {"PYTHONPATH": _env()["PYTHONPATH"], "OMP_NUM_THREADS": "1"}})
    elif started:
        ray.init(address=address)
    try:
        if use_gpu is None:
            use_gpu = ray.cluster_resources().get("GPU", 0) >= 1
            if not use_gpu and address is not None:
                raise RuntimeError(f"the preset trains on GPUs but the Ray cluster at {address} has none")
            log.warning("training on %s", "GPUs" if use_gpu else "CPU: no GPU on this machine")
        trainer = TorchTrainer(
            ray_train_loop,
            train_loop_config={"spec": spec.to_dict(), "token": token},
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            run_config=RunConfig(name=Path(spec.output_dir).name, storage_path=str(spec_path.parent.resolve() / "ray")),
        )
        trainer.fit()
    finally:
        marker.unlink(missing_ok=True)
        if started:
            ray.shutdown()
    return _metrics(spec)


def launch(spec: JobSpec, launcher: str = "inprocess", num_workers: int = 1, num_nodes: int = 1,
           ray_address: str | None = None, use_gpu: bool = False, timeout: float | None = None) -> dict[str, Any]:
    """The driver's entry: absolute paths, stale checkpoints removed (prepare_output), then the launcher
    ("inprocess", "torchrun": num_workers processes over num_nodes nodes, "ray": num_workers workers)."""
    spec = spec.resolved()
    world = 1 if launcher == "inprocess" else num_workers
    if launcher == "torchrun" and num_workers % num_nodes:
        raise ValueError(f"torchrun: num_workers {num_workers} is not a multiple of num_nodes {num_nodes}")
    prepare_output(spec, world)
    launchers: dict[str, Callable[[], dict[str, Any]]] = {
        "inprocess": lambda: run_job(spec),
        "torchrun": lambda: run_torchrun(spec, num_workers // num_nodes, timeout, num_nodes),
        "ray": lambda: run_ray(spec, num_workers, ray_address, use_gpu),
    }
    if launcher not in launchers:
        raise ValueError(f"unknown launcher {launcher!r}; one of {sorted(launchers)}{suggest(launcher, launchers)}")
    return launchers[launcher]()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", required=True, help="job spec JSON")
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--torchrun", type=int, metavar="N", help="launch N processes with torchrun")
    how.add_argument("--ray", type=int, metavar="N", help="a Ray Train job with N workers")
    ap.add_argument("--ray-address", default=None, help="'auto' to join a running Ray cluster")
    ap.add_argument("--gpu", action="store_true", help="Ray workers take one GPU each")
    args = ap.parse_args(argv)
    # A hand-written spec may use paths relative to this directory: `launch` makes them absolute.
    spec = JobSpec.from_dict(json.loads(Path(args.spec).read_text()), check=False)
    launcher = "torchrun" if args.torchrun else "ray" if args.ray else "inprocess"
    metrics = launch(spec, launcher, args.torchrun or args.ray or 1, ray_address=args.ray_address, use_gpu=args.gpu)
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
