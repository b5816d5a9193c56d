"""Batching, rank scoring, decoding and classification metrics on a tiny random model, against brute force or
by hand (generation metrics: tests/test_scorers.py)."""

import collections
import dataclasses
import itertools

import pytest
import torch

from bench.harness.batches import LENGTH_WINDOW, training_batches
from bench.harness.evaluation import classification_metrics, generate, rank_scores
from bench.harness.kinds.causal_lm import causal_lm_batch
from bench.harness.tasks import Example
from bench.harness.tokens import clean_generation, continuation_ids, prompt_ids


def test_labels_mask_prompt_and_padding_but_keep_eos(tiny_llama, e2e):
    _, tokenizer, _ = tiny_llama
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the SmolLM2 trap this guards against
    examples = [
        Example(fields={"mr": "name[A]"}, references=("A is.",)),
        Example(fields={"mr": "name[Bb], food[Thai]"}, references=("Bb serves Thai food.",)),
    ]
    batch = causal_lm_batch(tokenizer, e2e, examples, max_len=128)
    for row, ex in enumerate(examples):
        prompt = prompt_ids(tokenizer, e2e.prompt(ex))
        target = continuation_ids(tokenizer, e2e.target(ex)) + [tokenizer.eos_token_id]
        labels = batch["labels"][row]
        kept = labels[labels != -100].tolist()
        assert kept == target  # the end token survives although it equals the pad id
        assert (labels[: len(prompt)] == -100).all()
        assert batch["attention_mask"][row].sum() == len(prompt) + len(target)


def test_prompt_cut_from_the_left_to_fit(tiny_llama, e2e):
    _, tokenizer, _ = tiny_llama
    ex = Example(fields={"mr": "x" * 200}, references=("ok",))
    batch = causal_lm_batch(tokenizer, e2e, [ex], max_len=32)
    assert batch["input_ids"].shape[1] == 32
    assert batch["labels"][0, -3:].tolist()[-1] == tokenizer.eos_token_id


def test_length_grouped_batches_draw_every_example_once_per_epoch_with_less_padding(tiny_llama, sst2):
    from bench.harness.tasks import train_examples

    _, tokenizer, _ = tiny_llama
    batch_size = 8
    draws = batch_size * LENGTH_WINDOW * 3  # one epoch of `examples`, in three windows
    examples = train_examples(sst2, 200, 0)[:draws]

    def stream(grouped):
        batches = list(
            itertools.islice(
                training_batches(tokenizer, sst2, "causal_lm", examples, batch_size, 64, 0, grouped),
                draws // batch_size,
            )
        )
        padding = sum(int((1 - b["attention_mask"]).sum()) for b in batches) / sum(
            b["input_ids"].numel() for b in batches
        )
        rows = collections.Counter(
            tuple(r[m.bool()].tolist()) for b in batches for r, m in zip(b["input_ids"], b["attention_mask"])
        )
        return padding, rows

    plain_padding, plain_rows = stream(False)
    grouped_padding, grouped_rows = stream(True)
    every_example_once = collections.Counter(
        tuple(causal_lm_batch(tokenizer, sst2, [ex], 64)["input_ids"][0].tolist()) for ex in examples
    )
    assert grouped_rows == plain_rows == every_example_once
    # byte-level tiny tokenizer: 13% of a plain batch is padding here (SmolLM2 on SST-2: 42-49% -> 12-14%)
    assert plain_padding > 0.1 and grouped_padding < plain_padding / 3, (plain_padding, grouped_padding)


@pytest.mark.parametrize("verbalizer", [(" negative", " positive"), ("0", "1")])
def test_rank_scores_match_one_sequence_at_a_time(tiny_llama, sst2, verbalizer, brute_force_scores):
    model, tokenizer, _ = tiny_llama
    task = dataclasses.replace(sst2, verbalizer=verbalizer)
    examples = [
        Example(fields={"sentence": s}, label=k % 2)
        for k, s in enumerate(["great fun", "a dull , tired mess that never ends", "ok", "not bad at all"])
    ]
    batched = rank_scores(model, tokenizer, task, examples, batch_size=3, max_len=128)
    assert torch.allclose(batched, brute_force_scores(model, tokenizer, task, examples), atol=1e-4)


def test_single_token_labels_share_one_row(tiny_llama, sst2):
    model, tokenizer, _ = tiny_llama
    task = dataclasses.replace(sst2, verbalizer=("0", "1"))
    assert all(len(continuation_ids(tokenizer, w)) == 1 for w in task.verbalizer)
    calls = []
    hook = model.register_forward_hook(
        lambda m, args, kwargs, out: calls.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    examples = [Example(fields={"sentence": f"text {k}"}, label=0) for k in range(5)]
    rank_scores(model, tokenizer, task, examples, batch_size=16, max_len=64)
    hook.remove()
    assert calls == [5]  # one pass, one row per example for both labels


def test_batched_greedy_decoding_equals_one_at_a_time(tiny_llama):
    model, tokenizer, _ = tiny_llama
    prompts = [
        "name[The Eagle]\nDescription:",
        "a much longer prompt with many more bytes in it\nDescription:",
        "x\nDescription:",
    ]
    batched = generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=3, max_len=128)
    single = [generate(model, tokenizer, [p], max_new_tokens=8, batch_size=1, max_len=128)[0] for p in prompts]
    assert batched == single


def test_clean_generation_strips_leading_newline_then_cuts():
    assert clean_generation("\n The Eagle is a pub.\nName: x") == "The Eagle is a pub."
    assert clean_generation("") == ""


def test_classification_metrics_by_hand():
    metrics = classification_metrics([1, 0, 1, 1], [1, 0, 0, 1], ["accuracy", "f1"])
    assert metrics["accuracy"] == 75.0
    assert metrics["f1"] == pytest.approx(80.0)  # tp 2, fp 1, fn 0 -> 2*2/(4+1)
    three = classification_metrics([0, 1, 2, 2], [0, 1, 1, 2], ["accuracy", "f1"])
    # per-class F1: 1, 2/3, 2/3 -> macro 7/9
    assert three["f1"] == pytest.approx(100 * 7 / 9)


def test_example_ids_pair_across_cells_and_tell_repeats_apart():
    from bench.harness.evaluation import example_ids

    good, bad = Example(fields={"sentence": "great"}, label=1), Example(fields={"sentence": "dull"}, label=0)
    ids = example_ids([good, bad, good, good])
    assert len(set(ids)) == 4 and ids[2] == f"{ids[0]}#2" and ids[3] == f"{ids[0]}#3"
    assert example_ids([bad, good]) == [ids[1], ids[0]]  # content, not position, names an example
    assert example_ids([dataclasses.replace(good, label=0)])[0] != ids[0]
