"""The whole loop end to end on a CI-sized tiny configuration, and its resumability."""
import json
import time

import pytest

from align.recipes import rrtf

CI = [
    # small tiny models (the ci preset's sizes), few problems, short generations
    "tiny.n_layer=2", "tiny.n_embd=64", "tiny.n_train_problems=600", "tiny.student_steps=40",
    "tiny.teacher_steps=80", "tiny.batch_size=16",
    "data.n_train=12", "data.n_heldout=8", "evolve.rounds=1",
    "models.student.sample.n=2", "models.teachers.0.sample.n=2", "models.student.sample.max_new_tokens=48",
    "models.teachers.0.sample.max_new_tokens=48", "sample.shard_size=8",
    "train.args.num_train_epochs=1", "train.args.per_device_train_batch_size=4",
    "eval.max_new_tokens=48", "rank.strategy=pass_rate",
]


@pytest.mark.slow
def test_tiny_loop_end_to_end_then_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("RRTF_TINY_CACHE", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    from evol.tasks import generate_problems
    from rank.records import write_jsonl
    bench = tmp_path / "mybench.jsonl"
    write_jsonl(bench, generate_problems(3, split="heldout", seed=7, max_depth=2))
    res = rrtf.main(["--base", "tiny", "--run-dir", str(run_dir), *CI, f"eval.benchmarks=[{bench}]"])
    for name in ["config.yaml", "problems.jsonl", "heldout.jsonl", "rejected.jsonl", "candidates.jsonl",
                 "verdicts.jsonl", "ranked.jsonl", "eval.json", "report.md", "eval.png", "train/rrtf"]:
        assert (run_dir / name).exists(), name
    ev = json.loads((run_dir / "eval.json").read_text())
    for k in ("student_before", "student_after", "teacher"):
        assert 0.0 <= ev[k]["pass@1"] <= 1.0
    assert res["student_after"] == ev["student_after"]
    assert set(ev["benchmarks"]["mybench"]) == {"student_before", "teacher", "student_after"}
    assert ev["benchmarks"]["mybench"]["teacher"]["n_problems"] == 3
    # lineage on evolved problems
    rows = [json.loads(l) for l in (run_dir / "problems.jsonl").read_text().splitlines()]
    assert any(r["lineage"]["round"] == 1 and r["lineage"]["parent"] for r in rows)

    t0 = time.time()
    rrtf.main(["--base", "tiny", "--run-dir", str(run_dir), *CI, f"eval.benchmarks=[{bench}]"])
    assert time.time() - t0 < 60
    stages = {p.stem: json.loads(p.read_text()) for p in (run_dir / "stages").glob("*.json")}
    assert {"problems", "sample", "execute", "rank", "train-rrtf"} <= set(stages)


def test_dry_run_plans_starcoder_without_weights(capsys):
    rrtf.main(["--base", "starcoder-15b", "--dry-run"])
    out = capsys.readouterr().out
    assert "bigcode/starcoder" in out and "ZeRO stage 3" in out
    assert "global batch: 4 per device x 16 accumulation x 8 worker(s) = 512 prompts" in out
    assert "per GPU" in out or "per_gpu" in out


def test_bad_override_fails_before_anything_loads(capsys):
    with pytest.raises(SystemExit) as e:
        rrtf.main(["--base", "tiny", "models.student.sampel.n=3"])
    assert e.value.code == 2
    assert "did you mean 'sample'" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_default_rrtf_improves_the_student(tmp_path):
    """The README's first command as shipped (tiny models cached in ~/.cache/rrtf-align/tiny):
    RRTF must lift the student's held-out greedy pass@1."""
    res = rrtf.main(["--base", "tiny", "--run-dir", str(tmp_path / "run")])
    assert res["student_after"]["pass@1"] > res["student_before"]["pass@1"], res
    assert res["teacher"]["pass@1"] > res["student_before"]["pass@1"], res
