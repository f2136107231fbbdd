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
