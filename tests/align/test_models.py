"""Model registry and memory estimates. Run: .venv/bin/python -m pytest tests/align/test_models.py"""
from __future__ import annotations

import pytest

from align.models import REGISTRY, transformers_config, check_ref, count_parameters, estimate_memory, lookup, resolve_ref
from rank.plugins import UnknownNameError

# Published sizes (model cards / papers), in billions: the meta-device count must land near them.
PUBLISHED_B = {"starcoder-15b": 15.5, "starcoderbase-1b": 1.1, "codellama-7b": 6.7, "stable-code-3b": 2.7}


def test_required_entries_exist():
    assert set(REGISTRY) >= {"tiny:student", "tiny:teacher", *PUBLISHED_B}
    assert lookup("starcoder-15b").hub_id == "bigcode/starcoder"
    assert lookup("codellama-7b").architecture == "LlamaConfig"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_entry_builds_its_config_without_download(name):
    entry = lookup(name)
    cfg = transformers_config(entry)
    assert type(cfg).__name__ == entry.architecture
    assert cfg.vocab_size == entry.vocab_size


@pytest.mark.parametrize("name", sorted(PUBLISHED_B))
def test_parameter_counts_match_published_sizes(name):
    total, largest = count_parameters(lookup(name))
    assert total / 1e9 == pytest.approx(PUBLISHED_B[name], rel=0.05)
    assert 0 < largest < total


def test_starcoder_zero3_on_8_gpus_is_plausible():
    est = estimate_memory(lookup("starcoder-15b"), zero_stage=3, num_gpus_per_node=8, num_nodes=1, offload=False)
    assert est["total_params"] == pytest.approx(15.5e9, rel=0.01)
    # 18 bytes/param of states sharded over 8 GPUs (~35 GB) + the largest layer (fp32, ~1.2 GB).
    assert 30e9 < est["gpu_bytes_per_gpu"] < 40e9
    offl = estimate_memory(lookup("starcoder-15b"), 3, 8, 1, offload=True)
    assert offl["gpu_bytes_per_gpu"] < 2e9 < offl["cpu_bytes_per_node"]
    z2 = estimate_memory(lookup("starcoder-15b"), 2, 8, 1, offload=False)
    assert z2["gpu_bytes_per_gpu"] > est["gpu_bytes_per_gpu"]   # stage 2 keeps a full fp16 copy per GPU


def test_bad_stage_is_an_error():
    with pytest.raises(ValueError, match="zero_stage"):
        estimate_memory(lookup("tiny:student"), zero_stage=4)


def test_unknown_name_suggests_close_match():
    with pytest.raises(UnknownNameError, match="did you mean 'starcoder-15b'"):
        lookup("starcoder15b")
    with pytest.raises(UnknownNameError, match="registered:"):
        lookup("gpt-17")


def test_built_entry_builds_itself_and_hub_entries_resolve_to_their_id(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="built locally"):
        lookup("tiny:student").source
    assert lookup("WizardLMTeam/WizardCoder-15B-V1.0").name == "wizardcoder-15b"   # found by hub id too
    assert resolve_ref("starcoder-15b") == "bigcode/starcoder"
    assert resolve_ref(str(tmp_path)) == str(tmp_path) and resolve_ref("org/any-model") == "org/any-model"
    calls = []
    monkeypatch.setattr("align.tiny.build_tiny", lambda cfg, log: calls.append(cfg) or type(
        "M", (), {"student_path": tmp_path / "s", "teacher_path": tmp_path / "t"}))
    assert resolve_ref("tiny:teacher", {"n_layer": 1}) == str(tmp_path / "t")
    assert calls[0].n_layer == 1


def test_bad_model_reference_is_refused():
    for ok in ("starcoder-15b", "bigcode/starcoder", "someorg/somemodel"):
        check_ref(ok)
    for bad, match in [("starcoder15b", "did you mean 'starcoder-15b'"), ("", "empty"), ("./no/such/dir", "unknown")]:
        with pytest.raises(UnknownNameError, match=match):
            check_ref(bad)
