"""The prompt-sharing layouts (prefix = KV cache, packed = 4D block mask) equal the naive padded batch:
loss and gradients, two architectures, batch > 1, ragged k; and the fallback to naive.

Run: .venv/bin/python -m pytest tests/align/test_packing.py
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from align.train.losses import LOSSES, RankLossConfig  # noqa: E402
from align.train.packing import (choose_layout, layout_supported, naive_inputs, packed_inputs,  # noqa: E402
                                 response_logps)

V = 97


def bigcode(attn="sdpa"):
    torch.manual_seed(0)
    cfg = transformers.GPTBigCodeConfig(n_layer=2, n_embd=32, n_head=4, multi_query=True, vocab_size=V,
                                        n_positions=64, bos_token_id=0, eos_token_id=0)
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


def loss_and_grads(model, batch, layout, loss_name):
    model.zero_grad()
    logp_sum, lengths = response_logps(model, batch, layout)
    out = LOSSES[loss_name](logp_sum, lengths, batch["scores"], batch["teacher"], RankLossConfig(loss=loss_name))
    out["loss"].backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("loss_name, attn", [("rrtf", "sdpa"), ("rrhf", "sdpa"), ("rrtf", "eager")])
@pytest.mark.parametrize("layout", ["prefix", "packed"])
def test_shared_prompt_equals_naive_loss_and_grads(layout, loss_name, attn, arch):
    model, batch = MODELS[arch](attn), ragged_batch()
    packed, g_packed = loss_and_grads(model, batch, layout, loss_name)
    naive, g_naive = loss_and_grads(model, batch, "naive", loss_name)
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
def test_auto_picks_prefix_then_packed_under_gradient_checkpointing(arch):
    model = MODELS[arch]().train()
    assert layout_supported(model, "packed") and choose_layout(model, "auto") == "prefix"
    assert model.training and all(m.training for m in model.modules())  # the probe restores the modes
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    assert choose_layout(model, "auto") == "packed"                      # checkpointing drops the cache


@pytest.mark.parametrize("wrapper", [IgnoresMaskAndCache, RejectsMaskAndCache])
def test_fallback_to_naive_when_sharing_unsupported(wrapper):
    model = wrapper(bigcode()).eval()
    assert choose_layout(model, "auto") == "naive"
    batch = ragged_batch()
    _, grads = loss_and_grads(model, batch, "naive", "rrtf")            # the fallback trains
    _, reference = loss_and_grads(bigcode(), batch, "prefix", "rrtf")
    for name, g in reference.items():
        torch.testing.assert_close(grads["inner." + name], g, atol=1e-5, rtol=1e-4)


def test_bad_layout_name():
    with pytest.raises(ValueError, match="packing"):
        choose_layout(bigcode(), "packd")
