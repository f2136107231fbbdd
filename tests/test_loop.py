"""The whole loop end to end on a CI-sized tiny configuration, and its resumability."""
import json
import re

import pytest

from align import report
from align.recipes import rrtf

CI = [
    # small tiny models (the ci preset's sizes), few problems, short generations
    "tiny.n_layer=2", "tiny.n_embd=64", "tiny.n_train_problems=600", "tiny.student_steps=40",
    "tiny.teacher_steps=80", "tiny.batch_size=16",
    "data.n_train=12", "data.n_heldout=8", "evolve.rounds=1",
    "models.student.sample.n=2", "models.teachers.0.sample.n=2", "models.student.sample.max_new_tokens=48",
    "models.teachers.0.sample.max_new_tokens=48", "sample.shard_size=8",
    "train.args.num_train_epochs=1", "train.args.per_device_train_batch_size=4", "train.args.logging_steps=1",
    "eval.max_new_tokens=48", "rank.strategy=pass_rate",
]


def _artifacts(run_dir):
    """Every file of the run but the report (it states this invocation's wall time)."""
    skip = {"report.md", "eval.png", "outcomes.png", "training.png"}
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name not in skip}


def _stages_run(out: str) -> tuple[list[str], list[str]]:
    """(stages that ran, stages reused) as the run directory logged them."""
    return re.findall(r"^\[(\S+)\] running", out, re.M), re.findall(r"^\[(\S+)\] skipped", out, re.M)


@pytest.mark.slow
def test_tiny_loop_end_to_end_then_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RRTF_TINY_CACHE", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    from evol.tasks import generate_problems
    from rank.records import read_jsonl, write_jsonl
    bench = tmp_path / "mybench.jsonl"
    write_jsonl(bench, generate_problems(3, split="heldout", seed=7, max_depth=2))
    argv = ["--base", "tiny", "--run-dir", str(run_dir), *CI, f"eval.benchmarks=[{bench}]"]
    res = rrtf.main(argv)
    ran, reused = _stages_run(capsys.readouterr().out)
    assert reused == [] and {"problems", "sample", "execute", "rank", "train-rrtf", "eval-student", "eval-teacher",
                             "eval-rrtf", "eval-rrtf-mybench"} <= set(ran)
    for name in ["config.yaml", "problems.jsonl", "heldout.jsonl", "rejected.jsonl", "candidates.jsonl",
                 "verdicts.jsonl", "ranked.jsonl", "eval.json", "report.md", "eval.png", "outcomes.png",
                 "training.png", "train/rrtf/model.safetensors", "train/rrtf/log_history.jsonl"]:
        assert (run_dir / name).exists(), name
    ev = json.loads((run_dir / "eval.json").read_text())
    assert res["student_after"] == ev["student_after"]
    for name, stage in [("student_before", "eval-student"), ("teacher", "eval-teacher"), ("student_after", "eval-rrtf")]:
        rows = read_jsonl(run_dir / f"eval/{stage}.jsonl")     # pass@1 is the mean of the per-problem results
        assert len(rows) == ev[name]["n_problems"] == 8
        assert ev[name]["pass@1"] == pytest.approx(sum(r["c"] / r["n"] for r in rows) / 8)
        assert f"| {report.LABELS[name]} | {100 * ev[name]['pass@1']:.1f} [" in (run_dir / "report.md").read_text()
    assert set(ev["benchmarks"]["mybench"]) == {"student_before", "teacher", "student_after"}
    assert ev["benchmarks"]["mybench"]["teacher"]["n_problems"] == 3
    rows = read_jsonl(run_dir / "problems.jsonl")                 # lineage on evolved problems
    assert any(r["lineage"]["round"] == 1 and r["lineage"]["parent"] for r in rows)
    first = _artifacts(run_dir)

    # The same command again: every stage is reused and no artifact changes by a byte.
    rrtf.main(argv)
    ran, reused = _stages_run(capsys.readouterr().out)
    assert ran == [] and sorted(reused) == sorted(p.stem for p in (run_dir / "stages").glob("*.json"))
    assert _artifacts(run_dir) == first

    # A lost artifact is rebuilt by its stage alone, to the same bytes (greedy decoding is deterministic).
    (run_dir / "eval/eval-teacher.json").unlink()
    rrtf.main(argv)
    ran, _ = _stages_run(capsys.readouterr().out)
    assert ran == ["eval-teacher"]
    again = _artifacts(run_dir)
    manifest = "stages/eval-teacher.json"      # the rerun stage's own record: same fingerprint, new time
    assert json.loads(again.pop(manifest))["fingerprint"] == json.loads(first.pop(manifest))["fingerprint"]
    assert again == first


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
