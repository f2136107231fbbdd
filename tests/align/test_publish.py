"""Datasets written with `datasets` as Parquet + JSONL + card; load_dataset opens them as is."""
from __future__ import annotations

import json

import pytest

from align.publish import DatasetCard, push, write_dataset


def _card(**kw) -> DatasetCard:
    decon = {"checked": 3, "removed": 1, "benchmarks": {"mbpp": {"benchmark_problems": 500, "removed": 1,
                                                                "matches": [{"row_id": "x", "benchmark_id": "7"}]}}}
    return DatasetCard(title="t", produced_by="python -m align.recipes.self_instruct --base tiny",
                       config={"solve": {"n": 10}}, stats={"funnel": {"questions": 3}}, decontamination=decon, **kw)


ROWS = [{"id": "a", "prompt": "p", "tests": ["assert f() == 1"], "meta": {"k": 1}},
        {"id": "b", "prompt": "q", "tests": [], "meta": {"other": [1, 2]}}]   # meta keys differ per row


def test_written_dataset_loads_as_is_with_card(tmp_path):
    datasets = pytest.importorskip("datasets")
    out = write_dataset(tmp_path / "ds", {"train": ROWS, "test": ROWS[:1]}, _card())
    ds = datasets.load_dataset(str(out))
    assert ds["train"].num_rows == 2 and ds["test"].num_rows == 1
    assert json.loads(ds["train"][1]["meta"]) == {"other": [1, 2]} and ds["train"][0]["tests"] == ["assert f() == 1"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and "--base tiny" in card and "| mbpp | 500 | 1 |" in card
    assert json.loads((out / "decontamination.json").read_text())["removed"] == 1
    assert [json.loads(x)["meta"] for x in (out / "jsonl/train.jsonl").read_text().splitlines()] == \
        [r["meta"] for r in ROWS]
    # rewriting replaces the folder whole
    write_dataset(out, {"train": ROWS[:1]}, _card())
    assert datasets.load_dataset(str(out))["train"].num_rows == 1 and not (out / "data/test-00000-of-00001.parquet").exists()


def test_push_to_a_local_folder_and_to_the_hub(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    out = write_dataset(tmp_path / "ds", {"train": ROWS}, _card())
    where = push(out, str(tmp_path / "copy"))
    assert (tmp_path / "copy/README.md").read_text() == (out / "README.md").read_text() and where == str(tmp_path / "copy")

    calls = []

    class FakeApi:
        def create_repo(self, repo, **kw):
            calls.append(("create", repo, kw["repo_type"]))

        def upload_folder(self, **kw):
            calls.append(("upload", kw["repo_id"], kw["folder_path"], kw["repo_type"]))
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert push(out, "user/name") == "https://huggingface.co/datasets/user/name"
    assert calls == [("create", "user/name", "dataset"), ("upload", "user/name", str(out), "dataset")]


def test_bad_split_name_and_empty_split(tmp_path):
    with pytest.raises(ValueError, match="split name"):
        write_dataset(tmp_path / "ds", {"train/x": ROWS}, _card())
    with pytest.raises(ValueError, match="no rows"):
        write_dataset(tmp_path / "ds", {"train": ROWS, "test": []}, _card())
    assert not (tmp_path / "ds").exists()


def test_two_folders_of_the_same_name_do_not_share_the_datasets_cache(tmp_path):
    datasets = pytest.importorskip("datasets")
    a = write_dataset(tmp_path / "a/problems", {"train": ROWS}, _card())
    b = write_dataset(tmp_path / "b/problems", {"train": ROWS[:1] * 3}, _card())
    assert datasets.load_dataset(str(a))["train"].num_rows == 2
    assert datasets.load_dataset(str(b))["train"].num_rows == 3


def test_push_all_names_each_dataset(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    from align.publish import push_all

    for name in ("sft", "dpo"):
        write_dataset(tmp_path / "datasets" / name, {"train": ROWS}, _card())
    assert push_all(tmp_path / "datasets", str(tmp_path / "out"), log=lambda *_: None) == \
        [str(tmp_path / "out/dpo"), str(tmp_path / "out/sft")]
    import align.publish as P
    monkeypatch.setattr(P, "push", lambda folder, target: target)
    assert push_all(tmp_path / "datasets", "user/x", log=lambda *_: None) == ["user/x-dpo", "user/x-sft"]
