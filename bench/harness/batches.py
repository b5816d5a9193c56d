"""Training batches: the seeded, length-grouped stream of examples; each model kind (bench/harness/kinds/) turns
examples into token ids and pads them."""

from __future__ import annotations

import random
from collections.abc import Iterator

from bench.harness.kinds import get_kind

LENGTH_WINDOW = 8  # batches per window that `group_by_length` sorts


def training_batches(
    tokenizer,
    task,
    model_kind: str,
    examples,
    batch_size: int,
    max_len: int,
    seed: int,
    group_by_length: bool = True,
    with_index: bool = False,
) -> Iterator[dict]:
    """Endless batches: each epoch is a fresh seeded shuffle of the training examples.

    group_by_length (as Hugging Face Trainer's): the shuffled stream is cut into windows of
    LENGTH_WINDOW batches; a window's examples are sorted by token length, cut into batches, and the
    batches shuffled. Every example is still drawn once per epoch, but a batch holds examples of similar
    length, so little of it is padding (padding costs as much compute as text; docs/measured.md gives
    SST-2's share). Off, batches are the plain shuffled stream.

    Each example is tokenised once, when the first window that holds it is formed (one batched tokenizer
    call per window), and every batch is padded from those cached ids. `with_index`: each batch also holds
    `example_index`, its rows' indices into `examples` (for Method.training_loss).
    """
    kind = get_kind(model_kind)

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
                encoded.update(zip(new, kind.encode(tokenizer, task, [examples[i] for i in new], max_len)))
            if group_by_length:
                window.sort(key=lambda i: kind.length(encoded[i]))
            ready = [window[start : start + batch_size] for start in range(0, size, batch_size)]
            if group_by_length:
                rng.shuffle(ready)
        rows = ready.pop(0)
        batch = kind.collate([encoded[i] for i in rows], tokenizer)
        if with_index:
            import torch

            batch["example_index"] = torch.tensor(rows, dtype=torch.long)
        yield batch
