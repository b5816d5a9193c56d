"""Text to token ids and back, for every model kind: imports nothing of the project, so that batches, evaluation
and each model kind share it without importing each other."""

from __future__ import annotations


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def continuation_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


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


def clean_generation(text: str) -> str:
    """First line of the continuation; leading whitespace is dropped before cutting."""
    return text.lstrip().split("\n", 1)[0].strip()
