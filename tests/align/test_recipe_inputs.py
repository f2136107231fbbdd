"""What a user hands the loop recipe: every data.source form, and bad input refused at load.
Run: .venv/bin/python -m pytest tests/align/test_recipe_inputs.py"""
from __future__ import annotations

import argparse
import json

import pytest

from align import stages
from align.config_loader import ConfigError
from align.recipes import cli, rrtf
from evol.seeds import load_source
from rank.records import RecordError, to_dict, write_jsonl


def _cfg(base: str, *overrides: str):
    return cli.load_config("rrtf", argparse.Namespace(base=base, config=[], overrides=list(overrides),
                                                      ray_address=None))


def _sources(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    tasks = load_source("tasks", 5)
    write_jsonl(tmp_path / "p.jsonl", tasks)
    pq.write_table(pa.Table.from_pylist([{k: to_dict(p)[k] for k in ("id", "prompt", "entry_point", "tests")}
                                         for p in tasks]), tmp_path / "p.parquet")
    datasets.Dataset.from_list([{"q": p.prompt, "fn": p.entry_point, "t": p.tests} for p in tasks]) \
        .save_to_disk(str(tmp_path / "ds"))
    return tasks, {"tasks": [], f"{tmp_path}/p.jsonl": [], f"{tmp_path}/p.parquet": [], "humaneval": [],
                   f"hf:{tmp_path}/ds": ['data.fields={prompt: q, entry_point: fn, tests: t}']}


def test_every_data_source_form_through_the_recipe_config(tmp_path):
    tasks, sources = _sources(tmp_path)
    for base in ("tiny", "starcoder-15b"):
        for source, extra in sources.items():
            cfg = _cfg(base, f"data.source={source}", "data.limit=3", *extra)
            got = stages.seed_problems(cfg.data)
            assert len(got) == 3, source
            if source != "humaneval":
                assert [p.prompt for p in got] == [p.prompt for p in tasks[:3]], source


def test_a_bad_row_names_file_line_and_field(tmp_path):
    rows = [to_dict(p) for p in load_source("tasks", 3)]
    rows[1]["entry_point"] = 7
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg("starcoder-15b", f"data.source={tmp_path}/bad.jsonl")
    with pytest.raises(RecordError, match=r"bad.jsonl:2: field 'entry_point'"):
        stages.seed_problems(cfg.data)


@pytest.mark.parametrize("override, message", [
    ("rank.strategy=pangoo", r"rank.strategy: unknown ranking strategy 'pangoo' \(did you mean 'pangu'\?\)"),
    ("models.student.template=alpacca", r"models.student.template: .*did you mean 'alpaca'"),
    ("models.teachers.0.backend=vlm", r"models.teachers\[0\].backend: .*did you mean 'vllm'"),
    ("models.student.ref=starcoder15b", r"models.student.ref: unknown model 'starcoder15b'.*did you mean"),
    ("evolve.operators=[add_stepp]", r"evolve.operators: .*did you mean 'add_step'"),
    ("models.student.replicas=0", r"replicas must be >= 1"),
])
def test_bad_names_fail_at_load_not_after_sampling(override, message, capsys):
    with pytest.raises(SystemExit) as e:
        rrtf.main(["--base", "starcoder-15b", "--dry-run", override])
    assert e.value.code == 2
    assert "config error" in (err := capsys.readouterr().err)
    import re
    assert re.search(message, err), err


def test_default_benchmarks_for_registry_bases():
    cfg = _cfg("starcoder-15b", "data.source=mbpp:/data/mbpp.jsonl@train")
    assert stages.benchmarks(cfg) == ["humaneval", "mbpp:/data/mbpp.jsonl@test"]
    assert stages.benchmarks(_cfg("starcoder-15b")) == ["humaneval", "hf:mbpp:test"]
    assert stages.benchmarks(_cfg("tiny")) == []
    assert stages.benchmarks(_cfg("tiny", "eval.benchmarks=[humaneval]")) == ["humaneval"]
    assert [stages.suite_name(s) for s in ["humaneval", "mbpp:/x/mbpp.jsonl@test", "hf:org/mbpp:test",
                                           "/x/mine.jsonl", "/x/t.parquet"]] == ["humaneval", "mbpp", "mbpp",
                                                                                 "mine", "t"]


def test_config_error_names_the_preset_layer(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("models:\n  teachers:\n    - {ref: a/b, templat: chat}\n")
    with pytest.raises(ConfigError, match=r"x.yaml.*templat: unknown key \(did you mean 'template'\?\)"):
        cli.load_config("rrtf", argparse.Namespace(base="tiny", config=[str(f)], overrides=[],
                                                                ray_address=None))


def test_a_missing_benchmark_fails_before_any_model_or_sampling(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        rrtf.main(["--base", "starcoder-15b", "--run-dir", str(tmp_path / "run"),
                   f"eval.benchmarks=[{tmp_path}/missing.jsonl]"])
    assert not (tmp_path / "run" / "problems.jsonl").exists()
