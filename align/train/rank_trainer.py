"""RankTrainer: RRTF/RRHF ranking losses on a plain `transformers.Trainer` (so DeepSpeed and PEFT plug in).

Rows: {prompt, responses: [text, ...], scores: [...], roles: [...] (optional)}, e.g. from
`align.train.datasets.rrtf_rows`: the student's training text (align.templates.training_text), which the
collator tokenises as it is (align.tokenization: BOS where the model has one, EOS after each response)
and truncates to `max_length` per (prompt, response) without ever emptying a response.
The loss is `losses.LOSSES[loss_config.loss]` on per-response log-probs from `packing.response_logps`
(the prompt's computation shared by its k responses through the KV cache or a packed row with a block
mask, when the model allows; naive padded rows otherwise). The loss parts are logged next to `loss`:
rank_loss, ft_loss (averaged over the logging interval) and pairs (ranked pairs per step, all ranks).

    trainer = RankTrainer(model=model, args=TrainingArguments(...), train_dataset=rows,
                          processing_class=tokenizer, loss_config=RankLossConfig(loss="rrtf"))
    trainer.train()

or in one call, what the RRTF stage uses: `train_rank(model_path, rows, output_dir, loss_config, {...})`,
which resumes from output_dir's newest checkpoint and takes `lora={...}` (align/train/checkpoints.py).
Test: `pytest tests/align/test_rank_trainer.py`.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import torch
from transformers import Trainer

from align.tokenization import encode, eos_id
from align.train.checkpoints import fit, peft_model, zero3_checkpointing
from align.train.config import DEFAULT_RANK_MAX_LENGTH, rank_loss_config
from align.train.losses import RankLossConfig, get_loss
from align.train.layout_choice import Decision, decide
from align.train.packing import checkpointing, response_logps
from align.train.trl_train import cpu_safe_defaults

log = logging.getLogger(__name__)


def truncate(prompt: list[int], responses: list[list[int]], max_length: int) -> tuple[list[int], list[list[int]]]:
    """Fit every (prompt, response) into `max_length` tokens, never leaving a response empty.

    Responses are cut at the end; the prompt is cut at the start (the signature, next to the code,
    survives) and only as far as needed, down to `max_length // 2`, so each response keeps room.
    """
    if max_length < 4:   # a prompt keeps >= 2 tokens, which the KV-cache layout relies on
        raise ValueError(f"max_length must be >= 4, got {max_length}")
    longest = max(len(r) for r in responses)
    keep = min(len(prompt), max(max_length - longest, max_length // 2))
    prompt = prompt[len(prompt) - keep:]
    room = max_length - len(prompt)
    return prompt, [r[:room] for r in responses]


class RankCollator:
    """Tokenise rank rows into padded tensors: prompt_ids [B, P], prompt_lens [B], response_ids [B, K, R],
    response_lens [B, K] (0 = empty slot, groups are ragged), scores [B, K], teacher [B, K]."""

    def __init__(self, tokenizer, max_length: int = DEFAULT_RANK_MAX_LENGTH):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.eos_id = eos_id(tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = self.eos_id if pad is None else pad

    def tokens(self, row: dict) -> tuple[list[int], list[list[int]]]:
        """The row's prompt and responses as token ids, untruncated (align.tokenization's rule: the
        prompt with the model's BOS if it has one, each response ending in EOS)."""
        responses, scores = row.get("responses"), row.get("scores")
        if not isinstance(row.get("prompt"), str) or not responses or len(scores or []) != len(responses):
            raise ValueError(f"rank row needs 'prompt', non-empty 'responses' and as many 'scores'; got keys {sorted(row)}")
        return encode(self.tokenizer, row["prompt"], list(responses))

    def encode(self, row: dict) -> tuple[list[int], list[list[int]], list[float], list[bool]]:
        prompt, resp = self.tokens(row)
        roles = row.get("roles") or ["student"] * len(resp)
        if len(roles) != len(resp) or not set(roles) <= {"teacher", "student"}:
            raise ValueError(f"rank row: roles must be 'teacher'/'student', one per response; got {roles}")
        prompt, resp = truncate(prompt, resp, self.max_length)
        return prompt, resp, [float(s) for s in row["scores"]], [r == "teacher" for r in roles]

    def truncation_stats(self, rows: list[dict]) -> dict[str, int]:
        """What `max_length` cuts in `rows`: sequences (prompt + one response), how many of them are longer
        than max_length, how many prompts lose their start, responses lose their end (EOS included),
        and the longest untruncated sequence. Goes into the train stage's stats."""
        stats = {"max_length": self.max_length, "sequences": 0, "over_max_length": 0, "prompts_cut": 0,
                 "responses_cut": 0, "longest": 0}
        for row in rows:
            prompt, resp = self.tokens(row)
            cut_prompt, cut_resp = truncate(prompt, resp, self.max_length)
            lengths = [len(prompt) + len(r) for r in resp]
            stats["sequences"] += len(resp)
            stats["over_max_length"] += sum(n > self.max_length for n in lengths)
            stats["prompts_cut"] += len(cut_prompt) < len(prompt)
            stats["responses_cut"] += sum(len(a) < len(b) for a, b in zip(cut_resp, resp))
            stats["longest"] = max(stats["longest"], *lengths)
        return stats

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        enc = [self.encode(r) for r in rows]
        B = len(enc)
        K = max(len(e[1]) for e in enc)
        P = max(len(e[0]) for e in enc)
        R = max(len(r) for e in enc for r in e[1])
        out = {"prompt_ids": torch.full((B, P), self.pad_id, dtype=torch.long),
               "prompt_lens": torch.zeros(B, dtype=torch.long),
               "response_ids": torch.full((B, K, R), self.pad_id, dtype=torch.long),
               "response_lens": torch.zeros((B, K), dtype=torch.long),
               "scores": torch.zeros((B, K)), "teacher": torch.zeros((B, K), dtype=torch.bool)}
        for b, (prompt, resp, scores, teacher) in enumerate(enc):
            out["prompt_ids"][b, :len(prompt)] = torch.tensor(prompt)
            out["prompt_lens"][b] = len(prompt)
            for k, r in enumerate(resp):
                out["response_ids"][b, k, :len(r)] = torch.tensor(r)
                out["response_lens"][b, k] = len(r)
            out["scores"][b, :len(scores)] = torch.tensor(scores)
            out["teacher"][b, :len(teacher)] = torch.tensor(teacher)
        return out


def rank_collator(tokenizer, max_length: int = DEFAULT_RANK_MAX_LENGTH) -> RankCollator:
    return RankCollator(tokenizer, max_length)


class RankTrainer(Trainer):
    """`transformers.Trainer` with a ranking loss; constructor as Trainer's plus the keywords below.

    loss_config: RankLossConfig (or a dict of its fields); packing: "auto" | "prefix" | "packed" | "naive"
    (align/train/packing.py; "auto" probes the model once, and again if checkpointing is switched);
    max_length: per (prompt, response) token budget of the default collator.
    """

    def __init__(self, model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, *, loss_config: RankLossConfig | dict | None = None,
                 packing: str = "auto", max_length: int = DEFAULT_RANK_MAX_LENGTH, **kwargs):
        if args is not None and args.remove_unused_columns:
            # The default would strip the rows' text columns (the model's forward takes none of them).
            args.remove_unused_columns = False
        if data_collator is None:
            if processing_class is None:
                raise ValueError("RankTrainer needs processing_class (a tokenizer) or a data_collator")
            data_collator = rank_collator(processing_class, max_length)
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)
        if isinstance(loss_config, dict):
            loss_config = rank_loss_config(loss_config.get("loss", "rrtf"), loss_config)
        self.loss_config = loss_config or RankLossConfig()
        self.loss_fn = get_loss(self.loss_config.loss)
        self.packing = packing
        self.layout: str | None = None
        self._layouts: dict[bool, Decision] = {}   # by checkpointing on/off: Trainer may switch it on in train()
        self.decision: Decision | None = None
        self.pad_id = getattr(data_collator, "pad_id", 0)
        # Our loss is a batch mean: let Trainer divide by the accumulation steps itself.
        self.model_accepts_loss_kwargs = False
        self._parts: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    def _resolve_layout(self, model) -> str:
        """The layout for the current checkpointing state, decided once (align/train/layout_choice.py).

        Every rank runs the probe (its forwards are collective under ZeRO-3) and every rank then takes
        rank 0's decision, so ranks never run different layouts (different forwards would deadlock
        ZeRO-3's parameter gathers).
        """
        unwrapped = self.accelerator.unwrap_model(model)
        key = checkpointing(unwrapped)
        if key not in self._layouts:
            decision = decide(unwrapped, self.packing)
            if self.accelerator.num_processes > 1:
                from accelerate.utils import broadcast_object_list

                decision = broadcast_object_list([decision], from_process=0)[0]
            self._layouts[key] = decision
            if self.accelerator.is_main_process:   # a refused faster layout is worth a warning
                log.log(logging.WARNING if decision.reasons else logging.INFO, "RankTrainer: %s (requested %s, "
                        "checkpointing %s)", decision.describe(), self.packing, "on" if key else "off")
        self.decision = self._layouts[key]
        self.layout = self.decision.layout
        return self.layout

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        layout = self._resolve_layout(model)
        logp_sum, lengths = response_logps(model, inputs, layout, self.pad_id, self.decision.head)
        out = self.loss_fn(logp_sum, lengths, inputs["scores"], inputs["teacher"], self.loss_config)
        mode = "train" if model.training else "eval"
        for key in ("rank_loss", "ft_loss"):
            value = out[key].detach().float().reshape(1)
            self._parts[mode][key].append(self.accelerator.gather(value).mean().item())
        pairs = out["pairs"].detach().float().reshape(1)
        self._parts[mode]["pairs"].append(self.accelerator.gather(pairs).sum().item())
        return (out["loss"], out) if return_outputs else out["loss"]

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        for key, values in self._parts[mode].items():
            if values:
                logs[prefix + key] = sum(values) / len(values)
        self._parts[mode].clear()
        super().log(logs, start_time)


def train_rank(model_path: str, rows: list[dict], output_dir: str, loss_config: RankLossConfig | dict | None,
               training_args: dict, tokenizer_path: str | None = None, packing: str = "auto",
               max_length: int = DEFAULT_RANK_MAX_LENGTH, lora: dict | None = None,
               model_init_kwargs: dict | None = None) -> dict[str, Any]:
    """Train a causal LM on rank rows, save model + tokenizer to `output_dir`, return the metrics.

    A rerun resumes from the newest checkpoint-N in output_dir (metrics: resumed_from, global_step).
    `lora` (peft.LoraConfig fields) trains an adapter only; output_dir then gets the merged full model and
    output_dir/adapter the adapter, with TRL's ZeRO-3 workarounds (checkpoints.peft_model). `model_init_kwargs` go to `from_pretrained` (e.g. dtype,
    attn_implementation: "sdpa" or "flash_attention_2" where the device supports it), as TRL's configs do.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    if not rows:
        raise ValueError("train_rank: no training rows")
    # Arguments before the model: with a ZeRO-3 config they switch on is_deepspeed_zero3_enabled(), so
    # from_pretrained partitions the weights across ranks as they load rather than filling every rank.
    args = TrainingArguments(output_dir=str(output_dir),
                             **{**cpu_safe_defaults(), "remove_unused_columns": False, **training_args})
    zero3_checkpointing(args)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, **(model_init_kwargs or {}))
    if lora is not None:
        model = peft_model(model, lora, args)
    trainer = RankTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer,
                          loss_config=loss_config, packing=packing, max_length=max_length)
    metrics = fit(trainer, output_dir, tokenizer, merge_lora=lora is not None)
    last = [h for h in trainer.state.log_history if "rank_loss" in h]
    if last:
        metrics.update({f"last_{k}": last[-1][k] for k in ("loss", "rank_loss", "ft_loss", "pairs") if k in last[-1]})
    metrics["layout"] = trainer.layout
    metrics["layout_decision"] = trainer.decision.describe() if trainer.decision else None
    if trainer.is_world_process_zero():
        metrics.update({f"truncation_{k}": v for k, v in trainer.data_collator.truncation_stats(rows).items()})
    return metrics
