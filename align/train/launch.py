"""The loop's one training entry: ranked groups -> training rows -> a job spec -> the configured launcher.

    from align.train.launch import train_from_groups
    stats = train_from_groups(cfg.train, "rrtf", groups, init="/abs/student", out_dir=run.path("train/rrtf"),
                              ray_address=cfg.ray_address, template="pangu", problems=problems)

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
from align.train.datasets import build_rows, render_groups
from align.train.distributed import JobSpec, launch
from rank.records import Problem, RankedGroup, write_jsonl


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


def training_rows(train: Any, method: str, groups: Iterable[RankedGroup], template: str,
                  problems: dict[str, Problem], tokenizer_path: str) -> list[dict]:
    """`method`'s rows (train.dataset's builder) from the groups as the student's training text under
    its sampling `template` (the tokenizer is loaded only for a chat template)."""
    from align.templates import get_template
    groups = list(groups)
    tpl = get_template(template)
    tokenizer = None
    if groups and groups[0].problem_id in problems and not isinstance(tpl.render(problems[groups[0].problem_id]), str):
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    return build_rows(train.dataset or method, render_groups(groups, tpl, problems, tokenizer), **train.dataset_args)


def train_from_groups(train: Any, method: str, groups: Iterable[RankedGroup], init: str, out_dir: str | Path,
                      ray_address: str | None = None, *, template: str, problems: dict[str, Problem]) -> dict[str, Any]:
    """Build `method`'s rows from ranked groups (as text in the student's `template`), write them beside
    out_dir, train `init` into out_dir.

    Returns {"rows": n, **trainer metrics} (global_step, train_loss, resumed_from, truncation_*, ...).
    """
    rows = training_rows(train, method, groups, template, problems, init)
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
