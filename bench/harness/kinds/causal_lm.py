"""Causal LMs (GPT-2, Llama, Qwen, Gemma, SmolLM2): `prompt + target` as one sequence, the loss on the target only.

Label masks are built from lengths, never from the pad id: SmolLM2's pad and end-of-sequence are the same token,
and masking by pad id would hide the end token the model must learn to emit. The LM head runs only where the loss
reads it (a boolean `logits_to_keep`, shifted by the method's virtual tokens). Rank scoring and generation are in
bench/harness/evaluation.py (rank_scores, generate)."""

from __future__ import annotations

from bench.api.kinds import ModelKind
from bench.harness import evaluation
from bench.harness.tokens import pad


def prompt_target_pairs(tokenizer, prompts: list[str], targets: list[str], max_len: int, add_eos: bool):
    """Token ids (prompt, target) of each prompt and target, tokenised in one batched call; a prompt is cut
    from the left so that prompt + target fit `max_len`."""
    pairs = []
    for prompt, target in zip(
        tokenizer(prompts, add_special_tokens=True)["input_ids"],
        tokenizer(targets, add_special_tokens=False)["input_ids"],
    ):
        target = (target + [tokenizer.eos_token_id] if add_eos else target)[: max_len - 1]
        pairs.append((prompt[-(max_len - len(target)) :], target))
    return pairs


def causal_lm_pairs(tokenizer, task, examples, max_len: int):
    return prompt_target_pairs(
        tokenizer,
        [task.prompt(ex) for ex in examples],
        [task.target(ex) for ex in examples],
        max_len,
        add_eos=task.kind == "generation",
    )


def collate_causal_lm(pairs, pad_id: int) -> dict:
    """A right-padded training batch of (prompt, target) ids with labels = -100 everywhere but the targets."""
    import torch

    input_ids, attention_mask = pad([p + t for p, t in pairs], pad_id)
    labels = torch.full_like(input_ids, -100)
    for row, (p, t) in enumerate(pairs):
        labels[row, len(p) : len(p) + len(t)] = torch.tensor(t)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def causal_lm_batch(tokenizer, task, examples, max_len: int) -> dict:
    return collate_causal_lm(causal_lm_pairs(tokenizer, task, examples, max_len), tokenizer.pad_token_id)


def target_positions(labels, extra_positions: int = 0):
    """(keep, targets) for token labels (batch × length, -100 where no loss): `keep`, a boolean mask over the
    logits' positions (batch × (extra_positions + length): virtual tokens first) of the positions whose next
    token is a target, and `targets`, those next tokens in the order a boolean `logits_to_keep` returns
    logits (row-major)."""
    import torch.nn.functional as F

    following = F.pad(labels, (extra_positions, 1), value=-100)[:, 1:]
    keep = following != -100
    return keep, following[keep]


class CausalLM(ModelKind):
    name = "causal_lm"
    language_model = True
    transformers_class = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"

    def special_ids(self, tokenizer) -> dict:
        return {"eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id}

    def encode(self, tokenizer, task, examples, max_len: int) -> list:
        return causal_lm_pairs(tokenizer, task, examples, max_len)

    def collate(self, items: list, tokenizer) -> dict:
        return collate_causal_lm(items, tokenizer.pad_token_id)

    def step_loss(self, model, method, hp: dict, batch: dict, index):
        keep, targets = target_positions(batch["labels"], method.extra_positions(hp))
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, logits_to_keep=keep).logits
        loss = method.target_loss(logits, targets) if index is None else method.training_loss(logits, targets, index)
        return loss, logits.shape[0]

    def label_scores(self, model, tokenizer, task, examples, hp: dict, extra_positions: int, timer):
        return evaluation.rank_scores(
            model, tokenizer, task, examples, hp["eval_batch_size"], hp["max_len"], extra_positions, timer
        )

    def generate(
        self, model, tokenizer, prompts: list[str], max_new_tokens: int, hp: dict, extra_positions: int, timer
    ) -> list[str]:
        return evaluation.generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens,
            hp["eval_batch_size"],
            hp["max_len"],
            hp["num_beams"],
            timer,
            extra_positions,
        )
