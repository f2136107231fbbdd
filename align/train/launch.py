"""The loop's one training entry: ranked groups -> training rows -> a job spec -> the configured launcher.

    from align.train.launch import train_from_groups
    stats = train_from_groups(cfg.train, "rrtf", groups, init="/abs/student", out_dir=run.path("train/rrtf"),
                              ray_address=cfg.ray_address)

`train` is the recipe's `train:` section (align.recipes.loop_config.TrainConfig): `launcher` inprocess |
torchrun | ray, `num_workers` processes over `num_nodes` nodes, `args`/`trl` merged once
(align.train.config.trainer_options), `loss`/`loss_args`, `max_length`, `lora`, `deepspeed`. The job
runs through align.train.distributed.launch: absolute paths, a checkpoint resumed only under the same
fingerprint, a Ray worker refusing to start on a node that does not see the run directory. The returned
stats (the train stage's) carry the rows, the trainer's metrics and what max_length truncated.
Test: `pytest tests/align/test_distributed.py`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from align.train.config import RANK_METHODS, rank_max_length, trainer_options
from align.train.datasets import build_rows
from align.train.distributed import JobSpec, launch
from rank.records import RankedGroup, write_jsonl


def job_spec(train: Any, method: str, init: str, rows_path: str | Path, out_dir: str | Path) -> JobSpec:
    """The job for `method` on `init` (a local directory or a hub id), every local path absolute."""
    rank = method in RANK_METHODS
    options: dict[str, Any] = {}
    if rank:
        options["max_length"] = rank_max_length(train)
        options["packing"] = train.layout          # align/train/layout_choice.py ("auto": probed once)
        if train.model_init_kwargs:
            options["model_init_kwargs"] = dict(train.model_init_kwargs)
    loss = {"loss": train.loss, **_fields(train.loss_args)} if rank else {}
    spec = JobSpec(method=method, model_path=str(init), rows_path=str(rows_path), output_dir=str(out_dir),
                   config=trainer_options(train, method), deepspeed=train.deepspeed, lora=train.lora,
                   options=options, loss=loss)
    return spec.resolved()


def _fields(args: Any) -> dict[str, Any]:
    import dataclasses
    return dataclasses.asdict(args) if dataclasses.is_dataclass(args) else dict(args or {})


def train_from_groups(train: Any, method: str, groups: Iterable[RankedGroup], init: str, out_dir: str | Path,
                      ray_address: str | None = None) -> dict[str, Any]:
    """Build `method`'s rows from ranked groups, write them beside out_dir, train `init` into out_dir.

    Returns {"rows": n, **trainer metrics} (global_step, train_loss, resumed_from, truncation_*, ...).
    """
    rows = build_rows(train.dataset or method, groups, **train.dataset_args)
    if not rows:
        raise RuntimeError(f"no training rows for {method}: every group was dropped by the ranking "
                           f"strategy or the builder (see ranked.jsonl)")
    out_dir = Path(out_dir).resolve()
    rows_path = out_dir.parent / f"{method}-rows.jsonl"
    write_jsonl(rows_path, rows)
    spec = job_spec(train, method, init, rows_path, out_dir)
    # GPUs when the preset asks for them and the Ray cluster has some (None: decided after joining it).
    use_gpu = None if train.num_gpus_per_node > 0 else False
    metrics = launch(spec, train.launcher, train.num_workers, train.num_nodes, ray_address, use_gpu)
    return {"rows": len(rows), **metrics}   # run_job keeps only scalars (resumed_from, layout, numbers)
