"""align.recipes.compare: interval math, arms and variants, refusing re-sampling, and one end-to-end run."""
import json
import math

import pytest

from align.config_loader import ConfigError
from align.recipes import compare


def test_t_quantiles_match_the_table_and_fall_back_to_normal():
    assert compare.t975(1) == 12.706 and compare.t975(2) == 4.303 and compare.t975(2.9) == 4.303
    assert compare.t975(30) == 2.042 and compare.t975(500) == 1.96


def test_summarize_gives_mean_sample_std_and_t_interval():
    s = compare.summarize([0.5, 0.6, 0.7])
    assert s["mean"] == 0.6 and s["std"] == 0.1
    half = 4.303 * 0.1 / math.sqrt(3)                      # t(0.975, df=2) * s / sqrt(n)
    assert s["ci95"] == [round(0.6 - half, 4), round(0.6 + half, 4)]
    assert compare.summarize([0.3]) == {"mean": 0.3, "std": None, "ci95": None}   # no spread from one seed
    assert compare.summarize([0.0, 0.1])["ci95"][0] == 0.0                         # a pass rate is >= 0
    with pytest.raises(ValueError):
        compare.summarize([])


def test_welch_difference():
    # by hand: diff 0.0633, se 0.01334, Welch-Satterthwaite df 2.88 -> t(2) = 4.303
    d = compare.difference([0.55, 0.58, 0.59], [0.50, 0.52, 0.51])
    assert d["diff"] == pytest.approx(0.0633, abs=1e-4) and d["df"] == pytest.approx(2.9, abs=0.05)
    assert d["ci95"] == pytest.approx([0.0059, 0.1207], abs=2e-4) and d["separated"]
    assert not compare.difference([0.5, 0.6, 0.7], [0.55, 0.6, 0.65])["separated"]
    assert compare.difference([0.5], [0.5, 0.6]) is None


def test_paired_difference_over_shared_seeds():
    # by hand: per-seed differences 0.05, 0.06, 0.04 -> mean 0.05, sd 0.01, half 4.303 * 0.01 / sqrt(3) = 0.0248
    a, b = {0: 0.55, 1: 0.58, 2: 0.59, 3: 0.9}, {0: 0.50, 1: 0.52, 2: 0.55}     # seed 3 has no partner
    d = compare.paired_difference(a, b)
    assert d["n"] == 3 and d["diff"] == pytest.approx(0.05, abs=1e-4)
    assert d["ci95"] == pytest.approx([0.0252, 0.0748], abs=2e-4) and d["separated"]
    # the same numbers as independent samples do not separate (Welch), the pairing is what narrows it
    assert not compare.difference([0.55, 0.58, 0.59], [0.50, 0.52, 0.55])["separated"]
    assert compare.paired_difference({0: 0.5}, {0: 0.4, 1: 0.3}) is None


def test_arms_from_methods_and_variants():
    arms = compare.parse_arms(["rrtf", "sft"], ["norank:train.loss_args.rank_weight=0",
                                                "rrtf/lr:train.args.learning_rate=1e-4;train.args.seed=3",
                                                "rrtf/lr:train.loss_args.tie_margin=0"])
    assert [(a.name, a.method) for a in arms] == [("rrtf", "rrtf"), ("sft", "sft"), ("rrtf/norank", "rrtf"),
                                                  ("sft/norank", "sft"), ("rrtf/lr", "rrtf")]
    assert arms[-1].overrides == ["train.args.learning_rate=1e-4", "train.args.seed=3", "train.loss_args.tie_margin=0"]
    assert [a.name for a in compare.parse_arms(["rrtf"], ["x:a.b=1"], base_arms=False)] == ["rrtf/x"]
    for bad in ["noname", "dpo/x:a=1", "x:novalue", "bad name:a=1"]:
        with pytest.raises(ConfigError, match="--variant"):
            compare.parse_arms(["rrtf"], [bad])


def test_an_arm_that_would_need_new_samples_is_refused():
    from align.recipes.loop_config import RunConfig

    run_cfg = RunConfig()
    arm_cfg = RunConfig()
    arm_cfg.models.student.sample.n = 8
    with pytest.raises(ConfigError, match="models.student differs"):
        compare.check_same_data(compare.Arm("rrtf/n8", "rrtf"), arm_cfg, run_cfg)
    arm_cfg = RunConfig()
    arm_cfg.train.args["learning_rate"] = 1.0           # training fields may differ
    compare.check_same_data(compare.Arm("rrtf/lr", "rrtf"), arm_cfg, run_cfg)


def test_preset_steps_and_markdown():
    from align.recipes.loop_config import RunConfig

    cfg = RunConfig()
    cfg.train.args.update(per_device_train_batch_size=8, num_train_epochs=5)
    assert compare.preset_steps(cfg, 444) == 56 * 5
    cfg.train.args["max_steps"] = 7
    assert compare.preset_steps(cfg, 444) == 7
    report = {"run": "r", "eval": {"set": "heldout", "n_problems": 500},
              "budget": {"held_equal": ["optimizer steps (3)"], "not_equal": ["tokens"]},
              "arms": {"sft": {"method": "sft", "overrides": [], "seeds": [0.5, 0.6], "mean": 0.55, "std": 0.0707,
                               "ci95": [0.0, 1.0], "rows": 3, "tokens_seen": 9}},
              "reference": {"student": {"pass@1": 0.2}}, "baseline": "sft", "differences": {}}
    md = compare.markdown(report)
    assert "| sft | sft | - | 0.500 / 0.600 | 0.550 | 0.071 | [0.000, 1.000] | 3 | 9 |" in md
    assert "Held equal: optimizer steps (3)" in md and "| student (untrained reference)" in md


@pytest.mark.slow
def test_compare_end_to_end_on_a_ci_sized_run(tmp_path, monkeypatch):
    """A CI-sized loop populates the run; compare trains 2 methods and a variant x 2 seeds for 2 steps
    each from it, evaluates all on the held-out set, and a rerun skips every stage. (The CI-sized models
    pass no test, so SFT would get no rows: the ranking methods are compared.)"""
    from align.recipes import rrtf
    from tests.test_loop import CI

    monkeypatch.setenv("RRTF_TINY_CACHE", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    rrtf.main(["--base", "tiny", "--run-dir", str(run_dir), *CI])
    argv = ["--base", "tiny", "--run-dir", str(run_dir), "--methods", "rrhf,rrtf", "--seeds", "2", "--steps", "2",
            "--baseline", "rrhf",
            "--variant", "rrtf/norank:train.loss_args.rank_weight=0", *CI]
    report = compare.main(argv)
    out = run_dir / "compare" / "compare"
    saved = json.loads((out / "compare.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert list(saved["arms"]) == ["rrhf", "rrtf", "rrtf/norank"]
    for arm in saved["arms"].values():
        assert len(arm["seeds"]) == 2 and all(0 <= s <= 1 for s in arm["seeds"])
        assert arm["n_problems"] == 8 and arm["std"] is not None and len(arm["ci95"]) == 2
    assert saved["budget"]["optimizer_steps"] == 2 and set(saved["reference"]) == {"student", "teacher"}
    assert set(saved["differences"]) == {"rrtf", "rrtf/norank"} and set(saved["paired"]) == {"rrtf", "rrtf/norank"}
    assert saved["paired"]["rrtf"]["n"] == 2 and "paired 95% interval" in (out / "compare.md").read_text()
    assert (out / "compare.md").exists() and (out / "compare.png").exists()
    stages = json.loads((run_dir / "stages" / "compare-compare-rrtf--norank-s1-train.json").read_text())
    assert stages["stats"]["global_step"] == 2 and stages["stats"]["last_rank_loss"] >= 0
    assert compare.main(argv) == report                                  # resumed: nothing retrained
    cut = compare.main([*argv[:-len(CI)], "--seeds", "3", "--collect", *CI])   # seed 2 never ran: left out
    assert cut["not_finished"] == ["rrhf seed 2", "rrtf seed 2", "rrtf/norank seed 2"]
    assert cut["arms"]["rrtf"]["seeds"] == report["arms"]["rrtf"]["seeds"] and cut["reference"] == report["reference"]
    assert not (out / "rrtf" / "seed-2").exists()
    with pytest.raises(SystemExit):                                      # would need new samples
        compare.main([*argv, "models.student.sample.n=3"])
