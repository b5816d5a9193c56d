"""Encoders (BERT, RoBERTa) with a sequence-classification head: the task's text fields as the tokenizer's
segments, the class as the label; the head's own loss; classification by the head's logits. No generation."""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from bench.api.errors import BenchError
from bench.api.kinds import ModelKind


def encoder_inputs(tokenizer, task, examples, max_len: int) -> dict:
    columns = [[ex.fields[f] for ex in examples] for f in task.text_fields]
    return dict(tokenizer(*columns, truncation=True, max_length=max_len, padding=True, return_tensors="pt"))


def encoder_features(tokenizer, task, examples, max_len: int) -> list[dict]:
    """Each example's unpadded tokenizer output (input_ids, attention_mask, ...), as `encoder_inputs`
    tokenises it, with its class as `labels`."""
    columns = [[ex.fields[f] for ex in examples] for f in task.text_fields]
    encoded = tokenizer(*columns, truncation=True, max_length=max_len)
    return [
        {**{key: values[row] for key, values in encoded.items()}, "labels": ex.label} for row, ex in enumerate(examples)
    ]


@torch.no_grad()
def encoder_logits(model, tokenizer, task, examples, batch_size: int, max_len: int, timer=None) -> torch.Tensor:
    out = []
    chunks = [examples[start : start + batch_size] for start in range(0, len(examples), batch_size)]
    for chunk in tqdm(chunks, desc="classify", leave=False, mininterval=2):
        inputs = {k: v.to(model.device) for k, v in encoder_inputs(tokenizer, task, chunk, max_len).items()}
        start = time.perf_counter()
        out.append(model(**inputs).logits.float().cpu())
        if timer:
            timer.seconds += time.perf_counter() - start
            timer.tokens += int(inputs["attention_mask"].sum())
    return torch.cat(out)


class Encoder(ModelKind):
    name = "encoder"
    generates = False
    peft_task_type = "SEQ_CLS"

    def load_pretrained(self, source, num_labels: int | None):
        """With a sequence-classification head, seeded (the caller's RNG state untouched)."""
        from transformers import AutoModelForSequenceClassification

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return AutoModelForSequenceClassification.from_pretrained(
                source, num_labels=num_labels or 2, dtype=torch.float32
            )

    def encode(self, tokenizer, task, examples, max_len: int) -> list:
        return encoder_features(tokenizer, task, examples, max_len)

    def length(self, item) -> int:
        return len(item["input_ids"])

    def collate(self, items: list, tokenizer) -> dict:
        return dict(tokenizer.pad(items, return_tensors="pt"))

    def step_loss(self, model, method, hp: dict, batch: dict, index):
        return model(**batch).loss, 0  # a class per sequence: the classification head's own loss

    def label_scores(self, model, tokenizer, task, examples, hp: dict, extra_positions: int, timer):
        return encoder_logits(
            model, tokenizer, task, examples, hp["eval_batch_size"], hp["max_len"], timer
        ).log_softmax(dim=-1)

    def generate(
        self, model, tokenizer, prompts: list[str], max_new_tokens: int, hp: dict, extra_positions: int, timer
    ) -> list[str]:
        raise BenchError("an encoder with a classification head cannot generate text: use a causal LM")
