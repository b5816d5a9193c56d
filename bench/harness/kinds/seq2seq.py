"""Encoder-decoder (seq2seq) models: T5, BART. The prompt is the encoder's input, the target the decoder's.

Training: the encoder reads the (method-formatted) prompt, cut from the left to `max_len` tokens (its
tokenizer's end token kept last); the decoder reads the target ids + end token as labels (-100 on padding), shifted
right behind the model's decoder start token (T5: pad, BART: end token), as the model's own loss does. The loss is
the method's `target_loss` of the logits at the label positions, equal to the model's own loss (tests).

Classification: rank scoring through the decoder: each label word's ids + end token as a decoder sequence, scored
in one batched pass over every (example, label) pair; the score is the summed log-prob of the label's tokens and
the end token (a whole decoder sequence, as the model is trained to produce it; the end token tells " positive"
from " positive review"). The encoder runs once per (example, label) row: a method's soft prompt enters through
the model's forward (peft prompt tuning), which a separately run encoder would skip.

Generation: batched, KV-cached `bench.harness.generation.decode` (greedy: finished rows leave the batch; beam search:
`model.generate`), encoder inputs right-padded: BART's positions are
absolute, so left padding would move the text; a soft prompt goes before the text in the encoder and does not
move the decoder's positions, so no method needs batches of equal length here.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from bench.api.kinds import ModelKind
from bench.harness.tokens import continuation_ids, pad, prompt_ids


def seq2seq_pairs(tokenizer, task, examples, max_len: int) -> list[tuple[list[int], list[int]]]:
    """(encoder ids, label ids) per example: the prompt cut from the left to `max_len` (the tokenizer's specials
    kept at both ends), the target ids + end token cut to `max_len`."""
    pairs = []
    prompts = tokenizer([task.prompt(ex) for ex in examples], add_special_tokens=True)["input_ids"]
    targets = tokenizer([task.target(ex) for ex in examples], add_special_tokens=False)["input_ids"]
    for prompt, target in zip(prompts, targets):
        pairs.append((cut_left(tokenizer, prompt, max_len), (target + [tokenizer.eos_token_id])[:max_len]))
    return pairs


def cut_left(tokenizer, ids: list[int], max_len: int) -> list[int]:
    """`ids` cut from the left to `max_len`, keeping a leading begin token (BART's <s>) in front."""
    if len(ids) <= max_len:
        return ids
    keep = 1 if tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id else 0
    return ids[:keep] + ids[len(ids) - (max_len - keep) :]


def collate_seq2seq(pairs, pad_id: int) -> dict:
    """A batch: right-padded encoder ids, labels (-100 on padding) and the decoder's attention mask."""
    input_ids, attention_mask = pad([p for p, _ in pairs], pad_id)
    labels, decoder_attention_mask = pad([t for _, t in pairs], -100)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "decoder_attention_mask": decoder_attention_mask,
    }


def decoder_input_ids(model, labels):
    """Labels shifted right behind the decoder start token, -100 read as pad (the models' own shift)."""
    config = model.config
    shifted = labels.new_full(labels.shape, config.pad_token_id)
    shifted[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == -100, config.pad_token_id)
    shifted[:, 0] = config.decoder_start_token_id
    return shifted


def step_loss(model, method, batch: dict):
    """(loss, decoder positions at which the LM head ran) of one training batch: the method's `target_loss` over
    the label positions."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, decoder_input_ids=decoder_input_ids(model, labels)).logits
    keep = labels != -100
    copies = logits.shape[0] // labels.shape[0]  # a model answering each row several times, copy-major (ensembles)
    return method.target_loss(logits[keep.repeat(copies, 1)], labels[keep]), logits.shape[0] * logits.shape[1]


def _chunks(items, size):
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def rank_scores(
    model, tokenizer, task, examples, batch_size: int, max_len: int, timer=None, copies: int = 1
) -> torch.Tensor:
    """Summed log-prob of each label's decoder sequence (label ids + end token), shape (examples, labels); with
    `copies` > 1 (a model answering each row `copies` times, copy-major) (copies, examples, labels)."""
    labels = [continuation_ids(tokenizer, word) + [tokenizer.eos_token_id] for word in task.verbalizer]
    prompts = [cut_left(tokenizer, prompt_ids(tokenizer, task.prompt(ex)), max_len) for ex in examples]
    rows = [(i, j) for i in range(len(examples)) for j in range(len(labels))]
    rows.sort(key=lambda row: len(prompts[row[0]]))  # batches of similar length: less padding
    scores = torch.zeros(copies, len(examples), len(labels))
    for chunk in tqdm(list(_chunks(rows, batch_size)), desc="score", leave=False, mininterval=2):
        input_ids, attention_mask = pad([prompts[i] for i, _ in chunk], tokenizer.pad_token_id)
        target, decoder_mask = pad([labels[j] for _, j in chunk], -100)
        target = target.to(model.device)
        start = time.perf_counter()
        logits = model(
            input_ids=input_ids.to(model.device),
            attention_mask=attention_mask.to(model.device),
            decoder_input_ids=decoder_input_ids(model, target),
            decoder_attention_mask=decoder_mask.to(model.device),
        ).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        target = target.repeat(copies, 1)
        picked = logprobs.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1).masked_fill(target == -100, 0)
        if timer:
            timer.seconds += time.perf_counter() - start
            timer.tokens += copies * int(attention_mask.sum() + decoder_mask.sum())
        sums = picked.sum(dim=-1).cpu().view(copies, len(chunk))
        for b, (i, j) in enumerate(chunk):
            scores[:, i, j] = sums[:, b]
    return scores[0] if copies == 1 else scores


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    max_len: int,
    num_beams: int = 1,
    timer=None,
    drop_finished: bool = True,
) -> list[str]:
    """Batched, right-padded, KV-cached decoding (greedy unless num_beams > 1); the decoded continuations. Through
    `bench.harness.generation.decode`: greedy rows leave the batch when they end or their first line is done;
    `drop_finished=False` runs `model.generate` (the same texts)."""
    from bench.harness.generation import FirstLineDone, decode
    from bench.harness.tokens import clean_generation

    encoded = [cut_left(tokenizer, prompt_ids(tokenizer, p), max_len) for p in prompts]
    outputs: list[str] = [""] * len(prompts)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    for chunk in tqdm(list(_chunks(order, batch_size)), desc="generate", leave=False, mininterval=2):
        input_ids, attention_mask = pad([encoded[i] for i in chunk], tokenizer.pad_token_id)
        start = time.perf_counter()
        generated = decode(
            model,
            input_ids.to(model.device),
            attention_mask.to(model.device),
            max_new_tokens,
            tokenizer.pad_token_id,
            tokenizer.eos_token_id,
            num_beams,
            drop_finished,
            FirstLineDone(tokenizer),
        )
        if timer:
            timer.seconds += time.perf_counter() - start
            timer.tokens += int(attention_mask.sum()) + int((generated[:, 1:] != tokenizer.pad_token_id).sum())
        texts = tokenizer.batch_decode(generated[:, 1:].cpu(), skip_special_tokens=True)
        for i, text in zip(chunk, texts):
            outputs[i] = clean_generation(text)
    return outputs


class Seq2Seq(ModelKind):
    name = "seq2seq"
    transformers_class = "AutoModelForSeq2SeqLM"
    peft_task_type = "SEQ_2_SEQ_LM"

    def special_ids(self, tokenizer) -> dict:
        """The decoder starts from T5's pad or BART's end token, as the real models do."""
        return {
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "decoder_start_token_id": tokenizer.pad_token_id
            if tokenizer.bos_token_id is None
            else tokenizer.eos_token_id,
        }

    def encode(self, tokenizer, task, examples, max_len: int) -> list:
        return seq2seq_pairs(tokenizer, task, examples, max_len)

    def collate(self, items: list, tokenizer) -> dict:
        return collate_seq2seq(items, tokenizer.pad_token_id)

    def step_loss(self, model, method, hp: dict, batch: dict, index):
        return step_loss(model, method, batch)

    def batch_tokens(self, batch: dict) -> tuple[int, int]:
        encoder = int(batch["attention_mask"].sum())
        return encoder + int(batch["decoder_attention_mask"].sum()), encoder

    def label_scores(self, model, tokenizer, task, examples, hp: dict, extra_positions: int, timer):
        return rank_scores(model, tokenizer, task, examples, hp["eval_batch_size"], hp["max_len"], timer)

    def generate(
        self, model, tokenizer, prompts: list[str], max_new_tokens: int, hp: dict, extra_positions: int, timer
    ) -> list[str]:
        return generate(
            model, tokenizer, prompts, max_new_tokens, hp["eval_batch_size"], hp["max_len"], hp["num_beams"], timer
        )
