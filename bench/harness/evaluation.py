"""Evaluation: rank scoring of label words, batched greedy/beam generation, classification metrics
(the generation metrics are in bench/harness/scorers.py).

Classification with a causal LM asks the LM itself: each label word's log-probability after the
prompt, highest wins (Lester / PET style, no task head). All labels of all examples in a batch go
through one forward pass; when every label word is one token, the rows for one example are the same
sequence and collapse into one. Logits are computed only at the positions that are scored.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from bench.api.metrics import METRICS
from bench.harness.generation import FirstLineDone, decode
from bench.harness.tokens import clean_generation, continuation_ids, pad, prompt_ids


@dataclass
class Timer:
    """Accumulates model wall time and tokens across calls."""

    seconds: float = 0.0
    tokens: int = 0


def _chunks(items, size):
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def rank_scores(
    model,
    tokenizer,
    task,
    examples,
    batch_size: int,
    max_len: int,
    extra_positions: int = 0,
    timer: Timer | None = None,
    copies: int = 1,
) -> torch.Tensor:
    """Sum of label-token log-probs, shape (examples, labels).

    `copies` > 1: the model answers every input row with `copies` rows, copy-major (row c * rows + b is
    copy c of input row b; e.g. one row per prompt of a prompt ensemble); the scores then have shape
    (copies, examples, labels).
    """
    label_ids = [continuation_ids(tokenizer, word) for word in task.verbalizer]
    room = max_len - max(len(ids) for ids in label_ids)
    rows: dict[tuple, int] = {}  # distinct input sequence -> row
    requests = []  # (example, label, row, first scored position, target ids)
    for i, ex in enumerate(examples):
        prompt = prompt_ids(tokenizer, task.prompt(ex))[-room:]
        for j, ids in enumerate(label_ids):
            sequence = tuple(prompt + ids[:-1])
            row = rows.setdefault(sequence, len(rows))
            requests.append((i, j, row, len(prompt) - 1, ids))
    sequences = list(rows)
    scores = torch.zeros(copies, len(examples), len(label_ids))
    by_row: dict[int, list] = {}
    for request in requests:
        by_row.setdefault(request[2], []).append(request)
    # batches of similar length: less padding
    by_length = sorted(range(len(sequences)), key=lambda r: len(sequences[r]))
    for batch_rows in tqdm(list(_chunks(by_length, batch_size)), desc="score", leave=False, mininterval=2):
        input_ids, attention_mask = pad([list(sequences[r]) for r in batch_rows], tokenizer.pad_token_id)
        wanted = sorted({p + k for r in batch_rows for (_, _, _, p, ids) in by_row[r] for k in range(len(ids))})
        start = time.perf_counter()
        logits = model(
            input_ids=input_ids.to(model.device),
            attention_mask=attention_mask.to(model.device),
            logits_to_keep=torch.tensor(wanted, device=model.device) + extra_positions,
        ).logits.cpu()
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        if timer:
            timer.seconds += time.perf_counter() - start
            timer.tokens += copies * int(attention_mask.sum())
        column = {position: c for c, position in enumerate(wanted)}
        for c in range(copies):
            for b, r in enumerate(batch_rows):
                for i, j, _, first, ids in by_row[r]:
                    row = c * len(batch_rows) + b
                    scores[c, i, j] = sum(logprobs[row, column[first + k], t].item() for k, t in enumerate(ids))
    return scores[0] if copies == 1 else scores


def _generation_batches(lengths: list[int], batch_size: int, equal_length: bool) -> list[list[int]]:
    """Indices of the prompts per batch, longest first: prompts of similar length together (less padding),
    or (equal_length) only prompts of one token length together."""
    if not equal_length:
        return list(_chunks(sorted(range(len(lengths)), key=lambda i: -lengths[i]), batch_size))
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(n, []).append(i)
    return [chunk for n in sorted(groups, reverse=True) for chunk in _chunks(groups[n], batch_size)]


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    max_len: int,
    num_beams: int = 1,
    timer: Timer | None = None,
    extra_positions: int = 0,
    drop_finished: bool = True,
) -> list[str]:
    """Batched, left-padded, KV-cached decoding (greedy unless num_beams > 1), through
    `bench.harness.generation.decode`: greedy rows leave the batch when they end or their first line is done (the
    output is the first line); `drop_finished=False` runs `model.generate` (the same texts, and tokens of which ours
    are a prefix).

    With virtual tokens (`extra_positions` > 0, e.g. peft prompt tuning) left padding would sit between
    the virtual tokens and the text and shift the text's positions, so a batch then holds only prompts
    of equal token length (no padding): results do not depend on the batch, at some cost in speed.
    """
    encoded = [prompt_ids(tokenizer, p)[-max_len:] for p in prompts]
    outputs: list[str] = [""] * len(prompts)
    batches = _generation_batches([len(ids) for ids in encoded], batch_size, extra_positions > 0)
    for chunk in tqdm(batches, desc="generate", leave=False, mininterval=2):
        input_ids, attention_mask = pad([encoded[i] for i in chunk], tokenizer.pad_token_id, side="left")
        start = time.perf_counter()
        input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
        generated = decode(
            model,
            input_ids,
            attention_mask,
            max_new_tokens,
            tokenizer.pad_token_id,
            tokenizer.eos_token_id,
            num_beams,
            drop_finished,
            FirstLineDone(tokenizer),
        )
        new_tokens = generated[:, input_ids.shape[1] :]
        if timer:
            timer.seconds += time.perf_counter() - start
            timer.tokens += int(attention_mask.sum()) + int((new_tokens != tokenizer.pad_token_id).sum())
        texts = tokenizer.batch_decode(new_tokens.cpu(), skip_special_tokens=True)
        for i, text in zip(chunk, texts):
            outputs[i] = clean_generation(text)
    return outputs


def example_ids(examples) -> list[str]:
    """Stable ids of an eval set's examples: sha256 (16 hex digits) of each one's fields, label and references, so
    that two cells' outputs on one example pair up whatever order or subset they were evaluated in; an example
    that occurs again in the set (SST-2 and IMDB hold a few duplicates) gets `#2`, `#3`, ... after its hash."""
    seen: dict[str, int] = {}
    ids = []
    for ex in examples:
        content = json.dumps([ex.fields, ex.label, list(ex.references)], sort_keys=True, ensure_ascii=False)
        digest = hashlib.sha256(content.encode()).hexdigest()[:16]
        seen[digest] = seen.get(digest, 0) + 1
        ids.append(digest if seen[digest] == 1 else f"{digest}#{seen[digest]}")
    return ids


def classification_outputs(scores, examples) -> list[dict]:
    """Per-example outputs of a classifier from its scores (examples, labels): log-probabilities of each label
    (rank scoring: the label words' summed log-probs; encoders: log-softmax of the head's logits)."""
    return [
        {"id": i, "gold": ex.label, "pred": int(row.argmax()), "logprobs": [round(float(v), 5) for v in row]}
        for i, ex, row in zip(example_ids(examples), examples, scores)
    ]


def generation_outputs(hypotheses, examples) -> list[dict]:
    return [
        {"id": i, "gold": list(ex.references), "hyp": h}
        for i, ex, h in zip(example_ids(examples), examples, hypotheses)
    ]


def score_outputs(rows: list[dict], names, scorer: str | None = None) -> dict[str, float]:
    """The metrics of per-example outputs (classification_outputs / generation_outputs rows); generation as the
    eval set's official `scorer` computes them (bench/harness/scorers.py; default e2e-metrics). Records' metrics are
    computed by this from the rows the cell keeps, so re-scoring the kept rows gives the record's numbers."""
    if rows and "hyp" in rows[0]:
        from bench.harness.scorers import generation_metrics

        return generation_metrics([r["hyp"] for r in rows], [r["gold"] for r in rows], names, scorer or "e2e-metrics")
    return classification_metrics([r["pred"] for r in rows], [r["gold"] for r in rows], names)


def classification_metrics(predictions: list[int], labels: list[int], names) -> dict[str, float]:
    """Accuracy, and each other metric in `names` that the registry (bench/api/metrics.py) computes from
    predictions."""
    metrics = {"accuracy": METRICS["accuracy"].value(predictions, labels)}
    for name in names:
        if name != "accuracy" and name in METRICS and METRICS[name].value is not None:
            metrics[name] = METRICS[name].value(predictions, labels)
    return metrics
