"""Model registry and memory estimates. Run: .venv/bin/python -m pytest tests/align/test_models.py"""
from __future__ import annotations

import pytest

from align.models import REGISTRY, build_config, count_parameters, estimate_memory, lookup, with_path
from rank.plugins import UnknownNameError

# Published sizes (model cards / papers), in billions: the meta-device count must land near them.
PUBLISHED_B = {"starcoder-15b": 15.5, "starcoderbase-1b": 1.1, "codellama-7b": 6.7, "stable-code-3b": 2.7}


def test_required_entries_exist():
    assert set(REGISTRY) >= {"tiny", *PUBLISHED_B}
    assert lookup("starcoder-15b").hub_id == "bigcode/starcoder"
    assert lookup("codellama-7b").architecture == "LlamaConfig"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_entry_builds_its_config_without_download(name):
    entry = lookup(name)
    cfg = build_config(entry)
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
        estimate_memory(lookup("tiny"), zero_stage=4)


def test_unknown_name_suggests_close_match():
    with pytest.raises(UnknownNameError, match="did you mean 'starcoder-15b'"):
        lookup("starcoder15b")
    with pytest.raises(UnknownNameError, match="registered:"):
        lookup("gpt-17")


def test_local_entry_needs_a_path(tmp_path):
    with pytest.raises(ValueError, match="no path"):
        lookup("tiny").source
    assert with_path("tiny", tmp_path).source == str(tmp_path)
    assert lookup("tiny").path is None          # the registry itself is not mutated
