from pathlib import Path

import pytest

from align.config_loader import ConfigError, load
from align.recipes.loop_config import RunConfig
from align.recipes import cli

ROOT = Path(__file__).resolve().parents[1]
# recipes/_shared/ holds layers that presets include, not presets.
PRESETS = sorted(p for p in (ROOT / "recipes").glob("*/*.yaml") if not p.parent.name.startswith("_"))


def test_there_are_presets_for_every_registry_base():
    bases = {p.parent.name for p in PRESETS}
    assert {"tiny", "starcoder-15b", "codellama-7b", "stable-code-3b", "starcoderbase-1b"} <= bases


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_preset_loads_and_passes_through_checks(path):
    if path.stem == "self_instruct":     # the dataset job has its own config (align.recipes.self_instruct)
        from align.recipes.self_instruct import load_files
        cfg = load_files([path])
        assert cfg.base == path.parent.name
        return
    cfg = load(RunConfig, [path])
    assert cfg.method == path.stem
    assert cfg.base == path.parent.name
    cli.check_names(cfg)
    cli.check_passthrough(cfg)


def test_unknown_key_names_file_line_and_suggests(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("name: a\nmodels:\n  student: {ref: a/b}\n  studnt: {n: 2}\n")
    with pytest.raises(ConfigError, match=r"x.yaml:4: models.studnt: unknown key \(did you mean 'student'\?\); "
                                          r"known keys of ModelsConfig: student, teachers"):
        load(RunConfig, [f])
    # A key with no close match at this level gets no (misleading) suggestion, only the known keys.
    f.write_text("name: a\nsample:\n  shard_size: 3\n  temprature: 0.3\n")
    with pytest.raises(ConfigError, match=r"x.yaml:4: sample.temprature: unknown key; known keys of SampleConfig") as e:
        load(RunConfig, [f])
    assert "did you mean" not in str(e.value)


def test_nested_unknown_key_suggestion(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("models:\n  student:\n    sample:\n      temprature: 0.3\n")
    with pytest.raises(ConfigError, match=r"x.yaml:4: models.student.sample.temprature: unknown key \(did you mean 'temperature'\?\)"):
        load(RunConfig, [f])


def test_override_types_and_errors():
    cfg = load(RunConfig, [ROOT / "recipes/tiny/rrtf.yaml"], ["models.student.sample.n=7", "models.teachers.0.sample.n=3",
                                                                   "train.args.learning_rate=1e-5"])
    assert cfg.models.student.sample.n == 7 and cfg.models.teachers[0].sample.n == 3 and cfg.train.args["learning_rate"] == 1e-5
    with pytest.raises(ConfigError, match="override 'models.student.sample.n=lots': models.student.sample.n: "
                                          "expected an integer, got str 'lots'"):
        load(RunConfig, [ROOT / "recipes/tiny/rrtf.yaml"], ["models.student.sample.n=lots"])
    with pytest.raises(ConfigError, match="not an index of a list of 1"):
        load(RunConfig, [ROOT / "recipes/tiny/rrtf.yaml"], ["models.teachers.3.sample.n=2"])
    with pytest.raises(ConfigError, match="did you mean 'evolve'"):
        load(RunConfig, [ROOT / "recipes/tiny/rrtf.yaml"], ["evolv.rounds=2"])
    with pytest.raises(ConfigError, match="launcher.*not one of"):
        load(RunConfig, [ROOT / "recipes/tiny/rrtf.yaml"], ["train.launcher=slurm"])


def test_passthrough_keys_are_checked_against_the_library():
    cfg = load(RunConfig, [ROOT / "recipes/tiny/rrtf.yaml"], ["train.args.learnin_rate=1e-5"])
    with pytest.raises(ConfigError, match=r"train.args.learnin_rate: not a field of TrainingArguments \(did you mean 'learning_rate'\?\)"):
        cli.check_passthrough(cfg)
    cfg = load(RunConfig, [ROOT / "recipes/tiny/rrtf.yaml"], ["tiny.n_layers=3"])
    with pytest.raises(ConfigError, match=r"tiny.n_layers: not a field of TinyConfig \(did you mean 'n_layer'\?\)"):
        cli.check_passthrough(cfg)


def test_unknown_base_suggests():
    with pytest.raises(ConfigError, match="did you mean 'starcoder-15b'"):
        cli.preset_path("starcoder-15", "rrtf")
