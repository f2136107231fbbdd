"""Datasets as users want them: Parquet (+ JSONL) with a dataset card, loadable by `datasets`.

    write_dataset("runs/x/datasets/sft", {"train": rows}, DatasetCard(title=..., produced_by=..., ...))
    datasets.load_dataset("runs/x/datasets/sft")                 # opens it as is
    push("runs/x/datasets/sft", "user/my-dataset")               # Hugging Face Hub (or a local folder)

Layout of a dataset folder:
    README.md                      the card: YAML header naming the Parquet files per split, then
                                   what produced it, the config, stats / funnel, decontamination report
    data/<split>-00000-of-00001.parquet
    jsonl/<split>.jsonl            the same rows as JSON Lines (nested fields kept as they are)
    decontamination.json           when the producer decontaminated
Columns holding free-form dicts (`meta`) are stored as JSON strings in Parquet, so rows whose
dicts have different keys still share one Arrow schema.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rank.records import write_atomic, write_jsonl

JSON_COLUMNS = ("meta",)


@dataclass
class DatasetCard:
    title: str
    produced_by: str                          # the command / recipe that wrote it
    description: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)      # funnel or stage stats
    decontamination: dict[str, Any] | None = None           # evol.decontam report
    tags: list[str] = field(default_factory=lambda: ["code", "synthetic"])

    def render(self, splits: dict[str, int], columns: list[str], info: dict | None = None) -> str:
        header = {"configs": [{"config_name": "default", "data_files": [
            {"split": s, "path": f"data/{s}-*.parquet"} for s in splits]}], "tags": self.tags}
        if info:
            # Features and sizes: `datasets` hashes them into its cache key, which otherwise is the same
            # for every folder of the same name and split layout (a second such folder read the first's cache).
            header["dataset_info"] = info
        lines = ["---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "", f"# {self.title}", ""]
        if self.description:
            lines += [self.description, ""]
        lines += ["## How it was produced", "", "```", self.produced_by, "```", "",
                  "| split | rows |", "|---|---|", *(f"| {s} | {n} |" for s, n in splits.items()), "",
                  f"Columns: {', '.join(f'`{c}`' for c in columns)}"
                  + (f" (`{'`, `'.join(c for c in JSON_COLUMNS if c in columns)}` as JSON strings)"
                     if any(c in columns for c in JSON_COLUMNS) else "") + ".", ""]
        if self.stats:
            lines += ["## Stats", "", "```json", json.dumps(self.stats, indent=1), "```", ""]
        if self.decontamination is not None:
            d = self.decontamination
            lines += ["## Decontamination", "",
                      f"{d.get('removed', 0)} of {d.get('checked', 0)} problems removed for overlapping "
                      "benchmark test problems (details per match in `decontamination.json`).", "",
                      "| benchmark | benchmark problems | removed |", "|---|---|---|",
                      *(f"| {n} | {b['benchmark_problems']} | {b['removed']} |"
                        for n, b in d.get("benchmarks", {}).items()), ""]
        if self.config:
            lines += ["## Config", "", "```yaml", yaml.safe_dump(self.config, sort_keys=False).rstrip(), "```", ""]
        return "\n".join(lines)


def _arrow_row(row: dict) -> dict:
    return {k: json.dumps(v, sort_keys=True) if k in JSON_COLUMNS and not isinstance(v, str) else v
            for k, v in row.items()}


def write_dataset(out_dir: str | Path, splits: dict[str, list[dict]], card: DatasetCard) -> Path:
    """Write `splits` (split name -> rows) as Parquet + JSONL with the card; replaces out_dir whole.

    The folder is built next to `out_dir` and renamed into place, so a reader never sees half of one."""
    import datasets
    from datasets.info import DatasetInfo
    from datasets.splits import SplitDict, SplitInfo

    empty = [s for s, rows in splits.items() if not rows]
    if empty:   # `datasets` cannot load a split without rows, so there is no such dataset to write
        raise ValueError(f"dataset {out_dir}: split(s) {', '.join(empty)} have no rows")
    datasets.disable_progress_bars()     # one bar per split drowns the stage log
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    columns: list[str] = []
    features = None
    split_infos = {}
    for split, rows in splits.items():
        if not split.isidentifier():
            raise ValueError(f"split name {split!r} must be a plain identifier (train, test, ...)")
        (tmp / "data").mkdir(exist_ok=True)
        ds = datasets.Dataset.from_list([_arrow_row(r) for r in rows])
        if features is not None and ds.features != features:
            ds = ds.cast(features)     # splits share one schema (a column all null in one split takes the other's type)
        features = features or ds.features
        parquet = tmp / "data" / f"{split}-00000-of-00001.parquet"
        ds.to_parquet(str(parquet))
        split_infos[split] = SplitInfo(split, num_bytes=parquet.stat().st_size, num_examples=len(rows))
        write_jsonl(tmp / "jsonl" / f"{split}.jsonl", rows)
        columns = columns or list(ds.column_names)
    info = DatasetInfo(features=features, splits=SplitDict(split_infos),
                       dataset_size=sum(i.num_bytes for i in split_infos.values()))._to_yaml_dict()
    if card.decontamination is not None:
        write_atomic(tmp / "decontamination.json", json.dumps(card.decontamination, indent=1))
    write_atomic(tmp / "README.md", card.render({s: len(r) for s, r in splits.items()}, columns, info))
    tmp.chmod(0o755)     # mkdtemp makes it private; a dataset folder is for sharing
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def is_local(repo: str) -> bool:
    """A push target that is a folder on this machine rather than a Hub repo id."""
    return repo.startswith(("/", "./", "../", "file://"))


def push(folder: str | Path, repo: str, private: bool = False) -> str:
    """Upload a dataset folder: to the Hugging Face Hub as dataset repo `repo` ("user/name"), or,
    when `repo` is a local path (absolute, ./relative or file://), copy it there. Returns where it went."""
    folder = Path(folder)
    if is_local(repo):
        dest = Path(repo.removeprefix("file://"))
        shutil.copytree(folder, dest, dirs_exist_ok=True)
        return str(dest)
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="dataset")
    return f"https://huggingface.co/datasets/{repo}"


def push_all(datasets_dir: str | Path, repo: str, log=print) -> list[str]:
    """Push every dataset folder under `datasets_dir`: to Hub repos `<repo>-<name>`, or, for a local
    `repo`, to `<repo>/<name>`. Returns where each went."""
    out = []
    for folder in sorted(p for p in Path(datasets_dir).iterdir() if (p / "README.md").exists()):
        target = f"{repo.rstrip('/')}/{folder.name}" if is_local(repo) else f"{repo}-{folder.name}"
        out.append(push(folder, target))
        log(f"pushed {folder} to {out[-1]}")
    return out
