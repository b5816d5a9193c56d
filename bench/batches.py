"""Turning examples into padded tensors: the one place that decides how text becomes token ids.

Causal LMs see `prompt + target` with the loss on the target only. Label masks are built from
lengths, never from the pad id: SmolLM2's pad and end-of-sequence are the same token, and masking by
pad id would hide the end token the model must learn to emit.
"""
from __future__ import annotations

import random
from collections.abc import Iterator


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def continuation_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_target_ids(tokenizer, prompt: str, target: str, max_len: int, add_eos: bool):
    """Token ids of prompt and target; the prompt is cut from the left to fit `max_len`."""
    target_ids = continuation_ids(tokenizer, target)
    if add_eos:
        target_ids = target_ids + [tokenizer.eos_token_id]
    target_ids = target_ids[: max_len - 1]
    return prompt_ids(tokenizer, prompt)[-(max_len - len(target_ids)):], target_ids


def pad(sequences: list[list[int]], pad_id: int, side: str = "right"):
    """Pad to a rectangle: (input_ids, attention_mask) as long tensors."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def causal_lm_batch(tokenizer, task, examples, max_len: int) -> dict:
    """A right-padded training batch with labels = -100 everywhere but the target tokens."""
    import torch

    pairs = [prompt_target_ids(tokenizer, task.prompt(ex), task.target(ex), max_len,
                               add_eos=task.kind == "generation") for ex in examples]
    input_ids, attention_mask = pad([p + t for p, t in pairs], tokenizer.pad_token_id)
    labels = torch.full_like(input_ids, -100)
    for row, (p, t) in enumerate(pairs):
        labels[row, len(p): len(p) + len(t)] = torch.tensor(t)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def encoder_inputs(tokenizer, task, examples, max_len: int) -> dict:
    columns = [[ex.fields[f] for ex in examples] for f in task.text_fields]
    return dict(tokenizer(*columns, truncation=True, max_length=max_len, padding=True, return_tensors="pt"))


def encoder_batch(tokenizer, task, examples, max_len: int) -> dict:
    import torch

    batch = encoder_inputs(tokenizer, task, examples, max_len)
    batch["labels"] = torch.tensor([ex.label for ex in examples], dtype=torch.long)
    return batch


LENGTH_WINDOW = 8  # batches per window that `group_by_length` sorts


def training_batches(tokenizer, task, model_kind: str, examples, batch_size: int, max_len: int,
                     seed: int, group_by_length: bool = True) -> Iterator[dict]:
    """Endless batches: each epoch is a fresh seeded shuffle of the training examples.

    group_by_length (as Hugging Face Trainer's): the shuffled stream is cut into windows of
    LENGTH_WINDOW batches; a window's examples are sorted by token length, cut into batches, and the
    batches shuffled. Every example is still drawn once per epoch, but a batch holds examples of similar
    length, so little of it is padding (a random batch of SST-2 training phrases is about half padding,
    and padding costs as much compute as text). Off, batches are the plain shuffled stream.
    """
    build = causal_lm_batch if model_kind == "causal_lm" else encoder_batch
    rng = random.Random(seed)
    lengths: dict[int, int] = {}

    def length(i: int) -> int:
        if i not in lengths:
            lengths[i] = build(tokenizer, task, [examples[i]], max_len)["input_ids"].shape[1]
        return lengths[i]

    order: list[int] = []
    ready: list[list[int]] = []
    while True:
        if not ready:
            size = batch_size * (LENGTH_WINDOW if group_by_length else 1)
            while len(order) < size:
                epoch = list(range(len(examples)))
                rng.shuffle(epoch)
                order += epoch
            window, order = order[:size], order[size:]
            if group_by_length:
                window.sort(key=length)
            ready = [window[start:start + batch_size] for start in range(0, size, batch_size)]
            if group_by_length:
                rng.shuffle(ready)
        yield build(tokenizer, task, [examples[i] for i in ready.pop(0)], max_len)
