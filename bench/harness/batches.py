"""Turning examples into padded tensors: the one place that decides how text becomes token ids.

Causal LMs see `prompt + target` with the loss on the target only. Label masks are built from
lengths, never from the pad id: SmolLM2's pad and end-of-sequence are the same token, and masking by
pad id would hide the end token the model must learn to emit.
"""
from __future__ import annotations

import random
from collections.abc import Iterator

from bench.harness.tokens import pad


def prompt_target_pairs(tokenizer, prompts: list[str], targets: list[str], max_len: int, add_eos: bool):
    """Token ids (prompt, target) of each prompt and target, tokenised in one batched call; a prompt is cut
    from the left so that prompt + target fit `max_len`."""
    pairs = []
    for prompt, target in zip(tokenizer(prompts, add_special_tokens=True)["input_ids"],
                              tokenizer(targets, add_special_tokens=False)["input_ids"]):
        target = (target + [tokenizer.eos_token_id] if add_eos else target)[: max_len - 1]
        pairs.append((prompt[-(max_len - len(target)):], target))
    return pairs


def causal_lm_pairs(tokenizer, task, examples, max_len: int):
    return prompt_target_pairs(tokenizer, [task.prompt(ex) for ex in examples], [task.target(ex) for ex in examples],
                               max_len, add_eos=task.kind == "generation")


def collate_causal_lm(pairs, pad_id: int) -> dict:
    """A right-padded training batch of (prompt, target) ids with labels = -100 everywhere but the targets."""
    import torch

    input_ids, attention_mask = pad([p + t for p, t in pairs], pad_id)
    labels = torch.full_like(input_ids, -100)
    for row, (p, t) in enumerate(pairs):
        labels[row, len(p): len(p) + len(t)] = torch.tensor(t)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def causal_lm_batch(tokenizer, task, examples, max_len: int) -> dict:
    return collate_causal_lm(causal_lm_pairs(tokenizer, task, examples, max_len), tokenizer.pad_token_id)


def encoder_inputs(tokenizer, task, examples, max_len: int) -> dict:
    columns = [[ex.fields[f] for ex in examples] for f in task.text_fields]
    return dict(tokenizer(*columns, truncation=True, max_length=max_len, padding=True, return_tensors="pt"))


def encoder_features(tokenizer, task, examples, max_len: int) -> list[dict]:
    """Each example's unpadded tokenizer output (input_ids, attention_mask, ...), as `encoder_inputs`
    tokenises it, with its class as `labels`."""
    columns = [[ex.fields[f] for ex in examples] for f in task.text_fields]
    encoded = tokenizer(*columns, truncation=True, max_length=max_len)
    return [{**{key: values[row] for key, values in encoded.items()}, "labels": ex.label}
            for row, ex in enumerate(examples)]


LENGTH_WINDOW = 8  # batches per window that `group_by_length` sorts


def training_batches(tokenizer, task, model_kind: str, examples, batch_size: int, max_len: int,
                     seed: int, group_by_length: bool = True, with_index: bool = False) -> Iterator[dict]:
    """Endless batches: each epoch is a fresh seeded shuffle of the training examples.

    group_by_length (as Hugging Face Trainer's): the shuffled stream is cut into windows of
    LENGTH_WINDOW batches; a window's examples are sorted by token length, cut into batches, and the
    batches shuffled. Every example is still drawn once per epoch, but a batch holds examples of similar
    length, so little of it is padding (a random batch of SST-2 training phrases is about half padding,
    and padding costs as much compute as text). Off, batches are the plain shuffled stream.

    Each example is tokenised once, when the first window that holds it is formed (one batched tokenizer
    call per window), and every batch is padded from those cached ids. `with_index`: each batch also holds
    `example_index`, its rows' indices into `examples` (for Method.training_loss).
    """
    if model_kind == "causal_lm":
        def encode(batch):
            return causal_lm_pairs(tokenizer, task, batch, max_len)

        def length(pair) -> int:
            return len(pair[0]) + len(pair[1])

        def collate(items) -> dict:
            return collate_causal_lm(items, tokenizer.pad_token_id)
    elif model_kind == "seq2seq":
        from bench.harness.seq2seq import collate_seq2seq, seq2seq_pairs

        def encode(batch):
            return seq2seq_pairs(tokenizer, task, batch, max_len)

        def length(pair) -> int:
            return len(pair[0]) + len(pair[1])

        def collate(items) -> dict:
            return collate_seq2seq(items, tokenizer.pad_token_id)
    else:
        def encode(batch):
            return encoder_features(tokenizer, task, batch, max_len)

        def length(features) -> int:
            return len(features["input_ids"])

        def collate(items) -> dict:
            return dict(tokenizer.pad(items, return_tensors="pt"))

    rng = random.Random(seed)
    encoded: dict[int, object] = {}  # example index -> its token ids
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
            new = [i for i in dict.fromkeys(window) if i not in encoded]
            if new:
                encoded.update(zip(new, encode([examples[i] for i in new])))
            if group_by_length:
                window.sort(key=lambda i: length(encoded[i]))
            ready = [window[start:start + batch_size] for start in range(0, size, batch_size)]
            if group_by_length:
                rng.shuffle(ready)
        rows = ready.pop(0)
        batch = collate([encoded[i] for i in rows])
        if with_index:
            import torch

            batch["example_index"] = torch.tensor(rows, dtype=torch.long)
        yield batch
