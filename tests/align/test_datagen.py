"""The loop's problems stage (align/datagen.py): evolve.model resolution, dedup, decontamination, datasets."""
from __future__ import annotations

import json

import pytest

from align.config_loader import load
from align.datagen import evolve_spec, problems_stage
from align.recipes.loop_config import RunConfig
from align.recipes.cli import RECIPES
from align.rundir import RunDir
from rank.records import read_jsonl, write_jsonl


def _cfg(*overrides: str) -> RunConfig:
    return load(RunConfig, [RECIPES / "tiny/rrtf.yaml"], list(overrides))


def test_evolve_model_names_an_entry_or_is_its_own():
    assert evolve_spec(_cfg()) is None
    cfg = _cfg("evolve.model=teachers[0]")
    assert evolve_spec(cfg) is cfg.models.teachers[0]
    assert evolve_spec(_cfg("evolve.model=teachers.0")).ref == "tiny:teacher"
    cfg = _cfg("evolve.model=student")
    assert evolve_spec(cfg) is cfg.models.student
    cfg = _cfg("evolve.model=tiny:teacher")                 # the ref of one of the run's models
    assert evolve_spec(cfg) is cfg.models.teachers[0]
    cfg = _cfg("evolve.model.ref=some/model", "evolve.model.backend=openai")
    assert evolve_spec(cfg) is cfg.evolve.model
    with pytest.raises(ValueError, match="1 teacher"):
        evolve_spec(_cfg("evolve.model=teachers[2]"))


def test_problems_stage_decontaminates_reports_and_writes_the_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    from evol.seeds import load_source

    seeds = load_source("tasks", 20, seed=0)
    bench = tmp_path / "bench.jsonl"
    write_jsonl(bench, seeds[3:5])                          # two seeds are "benchmark test problems"
    cfg = _cfg("data.n_train=20", "data.n_heldout=4", "evolve.rounds=1", f"data.decontaminate=[{bench}]")
    run = RunDir(tmp_path / "run", log=lambda *_: None)
    stats = problems_stage(cfg, run, model_path=lambda ref: ref)
    problems = read_jsonl(run.path("problems.jsonl"))
    assert {p["id"] for p in problems}.isdisjoint({s.id for s in seeds[3:5]})
    report = json.loads(run.path("decontamination.json").read_text())
    matches = report["benchmarks"]["bench"]["matches"]
    assert report["benchmarks"]["bench"]["removed"] == len(matches) >= 2
    assert {m["row_id"] for m in matches} >= {s.id for s in seeds[3:5]}
    rejected = read_jsonl(run.path("rejected.jsonl"))
    assert sum(r["code"] == "contaminated" for r in rejected) == len(matches)
    assert stats["problems"] == len(problems) and stats["decontaminated"] == {"bench": len(matches)}
    # dedup only ever drops evolutions (never a seed, and never for resembling its parent)
    assert sum(p["lineage"]["round"] == 0 for p in problems) == 20 - sum(m["row_id"] in {s.id for s in seeds}
                                                                          for m in matches)
    assert all(r["round"] == 1 for r in rejected if r["code"] == "duplicate")
    assert all(p["meta"]["tests_verified"] == "reference" for p in problems if p["lineage"]["round"])
    ds = datasets.load_dataset(str(run.path("datasets/problems")))["train"]
    assert ds.num_rows == len(problems)
