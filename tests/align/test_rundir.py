from align.rundir import RunDir
from rank.records import read_jsonl


def test_stage_skips_when_inputs_and_config_match(tmp_path):
    run = RunDir(tmp_path, log=lambda s: None)
    inp = tmp_path / "in.txt"
    inp.write_text("a")
    calls = []

    def fn():
        calls.append(1)
        (tmp_path / "out.txt").write_text("x")
        return {"n": 1}
    assert not run.stage("s", config={"k": 1}, inputs=[inp], outputs=["out.txt"], fn=fn).skipped
    assert run.stage("s", config={"k": 1}, inputs=[inp], outputs=["out.txt"], fn=fn).skipped
    assert len(calls) == 1
    run.stage("s", config={"k": 2}, inputs=[inp], outputs=["out.txt"], fn=fn)   # config changed
    inp.write_text("b")
    run.stage("s", config={"k": 2}, inputs=[inp], outputs=["out.txt"], fn=fn)   # input changed
    (tmp_path / "out.txt").unlink()
    run.stage("s", config={"k": 2}, inputs=[inp], outputs=["out.txt"], fn=fn)   # output missing
    assert len(calls) == 4


def test_sharded_resumes_after_a_crash(tmp_path):
    run = RunDir(tmp_path, log=lambda s: None)
    seen = []

    def fn(items):
        if 7 in items and not seen.count("crashed"):
            seen.append("crashed")
            raise KeyboardInterrupt
        seen.append(tuple(items))
        return [{"x": i * i} for i in items]
    items = list(range(10))
    try:
        run.sharded("sq", items, 3, fn, "fp")
    except KeyboardInterrupt:
        pass
    assert seen == [(0, 1, 2), (3, 4, 5), "crashed"]
    rows = run.sharded("sq", items, 3, fn, "fp")
    assert [r["x"] for r in rows] == [i * i for i in items]
    assert seen[3:] == [(6, 7, 8), (9,)]                 # finished shards were not redone
    assert len(read_jsonl(tmp_path / "sq.shards/fp/shard-00000.jsonl")) == 3


def test_sharded_removes_shards_of_earlier_fingerprints(tmp_path):
    run = RunDir(tmp_path, log=lambda s: None)
    run.sharded("sq", [1, 2, 3], 2, lambda xs: [{"x": x} for x in xs], "old")
    run.sharded("sq", [1, 2, 3], 2, lambda xs: [{"x": -x} for x in xs], "new")
    assert [p.name for p in (tmp_path / "sq.shards").iterdir()] == ["new"]


def _save_model(d, weights=b"w1"):
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.safetensors").write_bytes(weights)
    (d / "config.json").write_text("{}")
    return d


def test_model_fingerprint_is_the_final_weights_not_the_checkpoints(tmp_path):
    run = RunDir(tmp_path / "run", log=lambda s: None)
    model = _save_model(tmp_path / "train")
    fp = run.model_fingerprint(model)
    _save_model(model / "checkpoint-10", b"other")          # checkpoints, logs, metrics beside it
    (model / "runs").mkdir()
    (model / "runs" / "events.out").write_text("x")
    (model / "metrics.json").write_text('{"loss": 1}')
    assert run.model_fingerprint(model) == fp
    assert run.model_fingerprint(_save_model(tmp_path / "copy")) == fp    # content, not location
    (model / "model.safetensors").write_bytes(b"w2-retrained")
    assert run.model_fingerprint(model) != fp
    (model / "tokenizer.json").write_text("{}")                          # the tokenizer is part of it
    assert run.model_fingerprint(model) != run.model_fingerprint(_save_model(tmp_path / "c2", b"w2-retrained"))


def test_model_fingerprint_reads_unchanged_weights_once(tmp_path, monkeypatch):
    import align.rundir as rd

    run = RunDir(tmp_path / "run", log=lambda s: None)
    model = _save_model(tmp_path / "train")
    reads = []
    real = rd._stream_hash
    monkeypatch.setattr(rd, "_stream_hash", lambda q: reads.append(q.name) or real(q))
    first = run.model_fingerprint(model)
    assert sorted(reads) == ["config.json", "model.safetensors"]
    assert RunDir(tmp_path / "run", log=lambda s: None).model_fingerprint(model) == first
    assert len(reads) == 2                                              # the rerun used the cache


def test_model_fingerprint_refuses_a_folder_without_weights(tmp_path):
    import pytest

    (tmp_path / "m").mkdir()
    with pytest.raises(FileNotFoundError, match="no weights"):
        RunDir(tmp_path / "run", log=lambda s: None).model_fingerprint(tmp_path / "m")
