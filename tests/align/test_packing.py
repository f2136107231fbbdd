"""The prompt-sharing layouts (prefix = KV cache, packed = 4D block mask) equal the naive padded batch:
loss and gradients, two architectures, two attention implementations, both logits heads, batch > 1,
ragged k, with and without activation checkpointing; the layout decision (static rules, per-token probe,
bf16 tolerance, forced layouts, rank 0's answer everywhere); the chunked head's peak memory.

Run: .venv/bin/python -m pytest tests/align/test_packing.py
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
import os

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from align.train.losses import LOSSES, RankLossConfig  # noqa: E402
from align.train import layout_choice, packing  # noqa: E402
from align.train.layout_choice import decide  # noqa: E402
from align.train.packing import naive_inputs, packed_inputs, response_logps  # noqa: E402

V = 97


def bigcode(attn="sdpa"):
    torch.manual_seed(0)
    cfg = transformers.GPTBigCodeConfig(n_layer=2, n_embd=32, n_head=4, multi_query=True, vocab_size=V,
                                        n_positions=64, bos_token_id=0, eos_token_id=0,
                                        attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)
    cfg._attn_implementation = attn
    return transformers.GPTBigCodeForCausalLM(cfg).eval()


def llama(attn="sdpa"):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=V, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=0)
    cfg._attn_implementation = attn
    return transformers.LlamaForCausalLM(cfg).eval()


MODELS = {"gpt_bigcode": bigcode, "llama": llama}


def ragged_batch():
    """B = 3 prompts of different lengths; k = 3, 2, 1 responses of different lengths."""
    g = torch.Generator().manual_seed(1)
    B, K, P, R = 3, 3, 9, 7
    return {"prompt_ids": torch.randint(1, V, (B, P), generator=g), "prompt_lens": torch.tensor([9, 4, 6]),
            "response_ids": torch.randint(1, V, (B, K, R), generator=g),
            "response_lens": torch.tensor([[7, 2, 5], [3, 7, 0], [1, 0, 0]]),
            "scores": torch.tensor([[3.0, 1.0, 3.0], [2.0, 2.5, 0.0], [3.0, 0.0, 0.0]]),
            "teacher": torch.tensor([[True, False, False], [False, True, False], [True, False, False]])}


def checkpointed(model, reentrant=False):
    """Training mode (checkpointing only acts there; the test models have no dropout) + checkpointing."""
    model.train().activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    return model


def loss_and_grads(model, batch, layout, loss_name, head="chunks"):
    model.zero_grad()
    logp_sum, lengths = response_logps(model, batch, layout, head=head)
    out = LOSSES[loss_name](logp_sum, lengths, batch["scores"], batch["teacher"], RankLossConfig(loss=loss_name))
    out["loss"].backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("loss_name, attn, head", [("rrtf", "sdpa", "chunks"), ("rrhf", "sdpa", "chunks"),
                                                   ("rrtf", "eager", "chunks"), ("rrtf", "sdpa", "logits")])
@pytest.mark.parametrize("ckpt", [False, True], ids=["plain", "checkpointed"])
@pytest.mark.parametrize("layout", ["prefix", "packed"])
def test_shared_prompt_equals_naive_loss_and_grads(layout, ckpt, loss_name, attn, head, arch):
    model, batch = MODELS[arch](attn), ragged_batch()
    if ckpt:
        checkpointed(model)
    packed, g_packed = loss_and_grads(model, batch, layout, loss_name, head)
    naive, g_naive = loss_and_grads(model, batch, "naive", loss_name, "logits")   # the model's own logits
    assert int(packed["pairs"]) == int(naive["pairs"]) > 0
    for key in ("loss", "rank_loss", "ft_loss"):
        torch.testing.assert_close(packed[key], naive[key], atol=1e-5, rtol=1e-5)
    assert g_packed.keys() == g_naive.keys() and g_packed
    for name in g_naive:
        torch.testing.assert_close(g_packed[name], g_naive[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("layout", ["prefix", "packed", "naive"])
@pytest.mark.parametrize("arch", sorted(MODELS))
def test_logp_is_each_response_alone_without_padding(arch, layout):
    """Per-response sums equal those of the response run alone in its own unpadded row: no pad token
    or other response leaks in, and lengths are the true ones."""
    model, batch = MODELS[arch](), ragged_batch()
    with torch.no_grad():
        logp_sum, lengths = response_logps(model, batch, layout)
        for b, k in [(0, 0), (0, 1), (1, 1), (2, 0)]:
            p, n = int(batch["prompt_lens"][b]), int(batch["response_lens"][b, k])
            ids = torch.cat([batch["prompt_ids"][b, :p], batch["response_ids"][b, k, :n]])[None]
            logits = model(input_ids=ids).logits[0, p - 1:p + n - 1].log_softmax(-1)
            alone = logits.gather(-1, ids[0, p:, None]).sum()
            torch.testing.assert_close(logp_sum[b, k], alone, atol=1e-5, rtol=1e-5)
    assert lengths.tolist() == batch["response_lens"].tolist()
    assert logp_sum[1, 2] == 0 and logp_sum[2, 1:].abs().sum() == 0     # empty slots stay empty


def test_packed_layout_shares_the_prompt():
    batch = ragged_batch()
    packed, naive = packed_inputs(batch), naive_inputs(batch)
    assert packed["input_ids"].shape == (3, 9 + 14)                      # one row per prompt
    assert naive["input_ids"].shape == (6, 9 + 7)                        # one row per response
    assert packed["position_ids"][0, 9:16].tolist() == list(range(9, 16))  # response 1 restarts after the prompt
    assert packed["position_ids"][0, 16:18].tolist() == [9, 10]
    mask = packed["attention_mask"][0, 0]
    assert mask[16, 8] == 0 and mask[16, 15] < 0 and mask[17, 16] == 0   # sees prompt and itself, not resp 1


class IgnoresMaskAndCache(torch.nn.Module):
    """A model that silently drops a 4D mask and the cache (as some kernels and wrappers do)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, **kwargs):
        if attention_mask is not None and attention_mask.dim() == 4:
            attention_mask = None
        if past_key_values is not None and attention_mask is not None:
            attention_mask = attention_mask[:, -input_ids.shape[1]:]
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)


class RejectsMaskAndCache(IgnoresMaskAndCache):
    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, **kwargs):
        if (attention_mask is not None and attention_mask.dim() != 2) or kwargs.get("use_cache"):
            raise ValueError("only 2D attention masks, no cache")
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_auto_picks_prefix_with_and_without_checkpointing(arch):
    model = MODELS[arch]().train()
    assert decide(model) == layout_choice.Decision("prefix", "chunks")
    assert model.training and all(m.training for m in model.modules())  # the probe restores the modes
    assert decide(checkpointed(model)).layout == "prefix"               # non-reentrant: the cache survives


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_reentrant_checkpointing_refuses_prefix(arch):
    """Reentrant checkpointing gives no gradient through the cache: packed, and forcing prefix is an error."""
    model = checkpointed(MODELS[arch](), reentrant=True)
    decision = decide(model)
    assert decision.layout == "packed" and "reentrant" in decision.reasons["prefix"]
    with pytest.raises(ValueError, match="reentrant"):
        decide(model, "prefix")
    with pytest.raises(ValueError, match="use_reentrant=False"):
        loss_and_grads(model, ragged_batch(), "prefix", "rrtf")


def test_probe_runs_the_checkpointed_path(monkeypatch):
    """A model whose checkpointed layers drop the cache (as transformers' layers do by default) must fail
    the prefix probe; the probe runs the layers in training mode to see it."""
    @contextlib.contextmanager
    def dropped(model):
        yield
    monkeypatch.setattr(packing, "cache_through_checkpoints", dropped)
    model = bigcode()
    assert decide(model).layout == "prefix"                             # no checkpointing: the cache is kept
    decision = decide(checkpointed(model))
    assert decision.layout == "packed" and "differ" in decision.reasons["prefix"]


def test_flash_attention_refuses_packed_before_any_forward(monkeypatch):
    model = bigcode()
    model.config._attn_implementation = "flash_attention_2"
    ran = []
    monkeypatch.setitem(packing.LAYOUTS, "packed", lambda *a: ran.append(a))
    decision = decide(model)
    assert "4D" in decision.reasons["packed"] and not ran               # refused up front, never run
    with pytest.raises(ValueError, match="4D block mask"):
        decide(model, "packed")
    assert not ran


def _bf16(arch, std=0.2):
    """A bf16 model with weights large enough that a wrong layout shows above bf16 rounding (a random
    init at std 0.02 predicts almost uniformly, whatever it attends to)."""
    model = MODELS[arch]()
    for p in model.parameters():
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=std)
    return model.to(torch.bfloat16)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_bf16_noise_is_not_a_mismatch(arch):
    """bf16 rounding (here: logits perturbed at bf16's relative precision, differently on every call)
    must not push a bf16 model onto the naive layout; a broken layout must still be caught."""
    model = _bf16(arch)

    calls = itertools.count()

    def rounding_noise(module, args, out):
        g = torch.Generator().manual_seed(next(calls))
        return out + (torch.randn(out.shape, generator=g) * out.float().abs() * 2 ** -7).to(out.dtype)
    handle = model.get_output_embeddings().register_forward_hook(rounding_noise)
    try:
        assert decide(model) == layout_choice.Decision("prefix", "chunks")
    finally:
        handle.remove()
    broken = decide(IgnoresMaskAndCache(_bf16(arch)))
    assert broken.layout == "naive" and set(broken.reasons) == {"prefix", "packed"}


@pytest.mark.parametrize("wrapper", [IgnoresMaskAndCache, RejectsMaskAndCache])
def test_fallback_to_naive_when_sharing_unsupported(wrapper):
    model = wrapper(bigcode()).eval()
    decision = decide(model)
    assert decision.layout == "naive" and set(decision.reasons) == {"prefix", "packed"}
    with pytest.raises(ValueError, match="cannot train"):
        decide(model, "packed")                                          # forced: refused with the reason
    batch = ragged_batch()
    _, grads = loss_and_grads(model, batch, "naive", "rrtf")            # the fallback trains
    _, reference = loss_and_grads(bigcode(), batch, "prefix", "rrtf")
    for name, g in reference.items():
        torch.testing.assert_close(grads["inner." + name], g, atol=1e-5, rtol=1e-4)


def test_logit_postprocessing_falls_back_to_the_models_logits():
    """A model that changes logits after lm_head (soft-capping, scaling) fails the chunked head's probe."""
    model = bigcode()
    inner_forward = model.forward

    def scaled(*args, **kwargs):
        out = inner_forward(*args, **kwargs)
        out.logits = out.logits * 0.5
        return out
    model.forward = scaled
    decision = decide(model)
    assert decision.head == "logits" and decision.layout == "prefix" and "head=chunks" in decision.reasons


def test_zero3_partitioned_lm_head_uses_the_models_logits():
    """Under ZeRO-3 (parameters carry `ds_id`) the chunked head is refused up front: its backward replay
    of lm_head would see the partitioned, empty weight (a 2-process ZeRO-3 LoRA run failed so)."""
    model = bigcode()
    model.get_output_embeddings().weight.ds_id = 0
    decision = decide(model)
    assert decision.head == "logits" and "ZeRO-3" in decision.reasons["head=chunks"]
    assert decision.layout == "prefix"


def test_bad_layout_name():
    with pytest.raises(ValueError, match="layout"):
        decide(bigcode(), "packd")


def _peak_rss_growth_mb(fn) -> float:
    """Peak RSS growth while fn runs: VmHWM reset through /proc/self/clear_refs (Linux), then read.
    glibc's mmap threshold is pinned at 1 MB first (it otherwise rises after the first large free and
    keeps freed tensors in the heap; set before the warm-up), so every large tensor is returned on free and
    RSS tracks live memory."""
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                      # resets VmHWM to the current RSS
    base = status("VmRSS:")
    fn()
    return status("VmHWM:") - base


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
def test_chunked_head_never_builds_the_vocab_wide_tensor(monkeypatch):
    """1024 target tokens x 32768 vocab: one fp32 [tokens, vocab] tensor is 128 MB. The chunked head
    (4 MB chunks here) must stay under a quarter of that over forward + backward, with the same log-probs
    and gradients as the model's own logits; the model's-logits head (which keeps [tokens, vocab] for
    backward) must not, which shows the measurement sees it."""
    from align.train import token_logps

    monkeypatch.setattr(token_logps, "CHUNK_BYTES", 4 * 2**20)
    ctypes.CDLL("libc.so.6").mallopt(-3, 2**20)           # M_MMAP_THRESHOLD: see _peak_rss_growth_mb
    torch.manual_seed(0)
    vocab = 32768
    cfg = transformers.GPTBigCodeConfig(n_layer=1, n_embd=16, n_head=2, multi_query=True, vocab_size=vocab,
                                        n_positions=300, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)
    model = transformers.GPTBigCodeForCausalLM(cfg).train()
    g = torch.Generator().manual_seed(0)
    batch = {"prompt_ids": torch.randint(1, vocab, (1, 16), generator=g), "prompt_lens": torch.tensor([16]),
             "response_ids": torch.randint(1, vocab, (1, 4, 256), generator=g),
             "response_lens": torch.tensor([[256] * 4])}
    full_mb = 1024 * vocab * 4 / 2**20
    results = {}

    def step(head):
        model.zero_grad(set_to_none=True)
        logp_sum, _ = response_logps(model, batch, "prefix", head=head)
        logp_sum.sum().backward()
        results[head] = (logp_sum.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})

    step("chunks")                          # warm-up: lazy inits outside the measurement
    peak = {head: _peak_rss_growth_mb(lambda: step(head)) for head in ("chunks", "logits")}
    assert peak["chunks"] < full_mb / 4, peak
    assert peak["logits"] > full_mb, peak
    torch.testing.assert_close(results["chunks"][0], results["logits"][0], atol=1e-5, rtol=1e-5)
    for name, grad in results["logits"][1].items():
        torch.testing.assert_close(results["chunks"][1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_every_rank_takes_rank_zeros_decision(monkeypatch, tmp_path):
    """RankTrainer decides once per checkpointing state and uses rank 0's decision on every rank."""
    from align.train.rank_trainer import RankTrainer

    model = bigcode()
    trainer = RankTrainer(model=model, args=transformers.TrainingArguments(str(tmp_path), report_to=[], use_cpu=True),
                          data_collator=lambda rows: rows, train_dataset=[{}])

    class SecondRank:
        num_processes, is_main_process = 2, False

        @staticmethod
        def unwrap_model(m):
            return m
    trainer.accelerator = SecondRank()
    sent = []
    rank0 = layout_choice.Decision("naive", "logits", {"prefix": "rank 0's probe failed"})

    def broadcast(objects, from_process):
        sent.append((list(objects), from_process))
        return [rank0]
    monkeypatch.setattr("accelerate.utils.broadcast_object_list", broadcast)
    assert trainer._resolve_layout(model) == "naive" and trainer.decision == rank0
    assert sent == [([layout_choice.Decision("prefix", "chunks")], 0)]   # this rank's own answer was prefix
    trainer._resolve_layout(model)
    assert len(sent) == 1                                                # decided once, not per step


def test_train_layout_reaches_the_trainer_from_the_config(tmp_path):
    """`train.layout` in a preset (here set by an override, as a user would) is validated at load and
    becomes the trainer's `packing` in the job spec; it is refused for methods without a layout."""
    from pathlib import Path

    from align import config_loader as config_mod
    from align.recipes.loop_config import RunConfig
    from align.train.config import check_train
    from align.train.launch import job_spec

    preset = Path(__file__).parents[2] / "recipes/tiny/rrtf.yaml"
    with pytest.raises(config_mod.ConfigError, match="layout"):
        config_mod.load(RunConfig, [preset], ["train.layout=packd"])
    cfg = config_mod.load(RunConfig, [preset], ["train.layout=packed"])
    (tmp_path / "init").mkdir()
    (tmp_path / "rows.jsonl").write_text("")
    spec = job_spec(cfg.train, "rrtf", str(tmp_path / "init"), tmp_path / "rows.jsonl", tmp_path / "out")
    assert spec.options["packing"] == "packed"
    check_train(cfg.train, "rrtf")
    with pytest.raises(ValueError, match="train.layout"):
        check_train(cfg.train, "dpo")


# ---------------------------------------------------------------- GPU tier (CPU coverage: everything above)

def _gpu_attn(attn):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA; the CPU tests above cover the same layouts in fp32")
    if attn == "flash_attention_2":
        pytest.importorskip("flash_attn", reason="flash_attention_2 needs the flash-attn package")


@pytest.mark.gpu
@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("attn", ["sdpa", "flash_attention_2"])
@pytest.mark.parametrize("ckpt", [False, True], ids=["plain", "checkpointed"])
def test_gpu_bf16_decision_and_equality(arch, attn, ckpt):
    """bf16 on CUDA: the decision keeps a shared-prompt layout (prefix; packed refused up front under
    flash_attention_2), and its loss and gradients match naive within bf16 rounding."""
    _gpu_attn(attn)
    model = _bf16(arch, std=0.02).cuda()
    model.config._attn_implementation = attn
    if ckpt:
        checkpointed(model)
    decision = decide(model)
    assert decision.layout == "prefix", decision.describe()
    if attn == "flash_attention_2":
        assert "4D" in layout_choice.static_reason(model, "packed")
    batch = {k: v.cuda() for k, v in ragged_batch().items()}
    layouts = ["prefix"] + (["packed"] if attn in layout_choice.MASK_4D else [])
    naive, g_naive = loss_and_grads(model, batch, "naive", "rrtf", "logits")
    for layout in layouts:
        out, grads = loss_and_grads(model, batch, layout, "rrtf", decision.head)
        torch.testing.assert_close(out["loss"].float(), naive["loss"].float(), atol=2e-2, rtol=2e-2)
        flat = torch.cat([grads[n].float().flatten() for n in g_naive])
        ref = torch.cat([g_naive[n].float().flatten() for n in g_naive])
        assert torch.nn.functional.cosine_similarity(flat, ref, dim=0) > 0.99, layout
