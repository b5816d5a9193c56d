"""Batching, rank scoring, decoding and metrics on a tiny random model, against brute force or by hand."""
import collections
import dataclasses
import math

import pytest
import torch

import itertools

from bench.batches import LENGTH_WINDOW, causal_lm_batch, continuation_ids, prompt_ids, training_batches
from bench.evaluation import (classification_metrics, clean_generation, generate, generation_metrics,
                              rank_scores)
from bench.tasks import Example


def test_labels_mask_prompt_and_padding_but_keep_eos(tiny_llama, e2e):
    _, tokenizer, _ = tiny_llama
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the SmolLM2 trap this guards against
    examples = [Example(fields={"mr": "name[A]"}, references=("A is.",)),
                Example(fields={"mr": "name[Bb], food[Thai]"}, references=("Bb serves Thai food.",))]
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
    from bench.tasks import train_examples

    _, tokenizer, _ = tiny_llama
    batch_size = 8
    draws = batch_size * LENGTH_WINDOW * 3  # one epoch of `examples`, in three windows
    examples = train_examples(sst2, 200, 0)[:draws]

    def stream(grouped):
        batches = list(itertools.islice(training_batches(tokenizer, sst2, "causal_lm", examples, batch_size, 64, 0,
                                                         grouped), draws // batch_size))
        padding = sum(int((1 - b["attention_mask"]).sum()) for b in batches) / sum(b["input_ids"].numel() for b in batches)
        rows = collections.Counter(tuple(r[m.bool()].tolist()) for b in batches
                                   for r, m in zip(b["input_ids"], b["attention_mask"]))
        return padding, rows

    plain_padding, plain_rows = stream(False)
    grouped_padding, grouped_rows = stream(True)
    every_example_once = collections.Counter(tuple(causal_lm_batch(tokenizer, sst2, [ex], 64)["input_ids"][0].tolist())
                                             for ex in examples)
    assert grouped_rows == plain_rows == every_example_once
    # byte-level tiny tokenizer: 13% of a plain batch is padding here (SmolLM2 on SST-2: 42-49% -> 12-14%)
    assert plain_padding > 0.1 and grouped_padding < plain_padding / 3, (plain_padding, grouped_padding)


@pytest.mark.parametrize("verbalizer", [(" negative", " positive"), ("0", "1")])
def test_rank_scores_match_one_sequence_at_a_time(tiny_llama, sst2, verbalizer, brute_force_scores):
    model, tokenizer, _ = tiny_llama
    task = dataclasses.replace(sst2, verbalizer=verbalizer)
    examples = [Example(fields={"sentence": s}, label=k % 2) for k, s in
                enumerate(["great fun", "a dull , tired mess that never ends", "ok", "not bad at all"])]
    batched = rank_scores(model, tokenizer, task, examples, batch_size=3, max_len=128)
    assert torch.allclose(batched, brute_force_scores(model, tokenizer, task, examples), atol=1e-4)


def test_single_token_labels_share_one_row(tiny_llama, sst2):
    model, tokenizer, _ = tiny_llama
    task = dataclasses.replace(sst2, verbalizer=("0", "1"))
    assert all(len(continuation_ids(tokenizer, w)) == 1 for w in task.verbalizer)
    calls = []
    hook = model.register_forward_hook(lambda m, args, kwargs, out: calls.append(kwargs["input_ids"].shape[0]),
                                       with_kwargs=True)
    examples = [Example(fields={"sentence": f"text {k}"}, label=0) for k in range(5)]
    rank_scores(model, tokenizer, task, examples, batch_size=16, max_len=64)
    hook.remove()
    assert calls == [5]  # one pass, one row per example for both labels


def test_batched_greedy_decoding_equals_one_at_a_time(tiny_llama):
    model, tokenizer, _ = tiny_llama
    prompts = ["name[The Eagle]\nDescription:", "a much longer prompt with many more bytes in it\nDescription:",
               "x\nDescription:"]
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


def test_generation_metrics_by_hand():
    refs = [["x y z w", "a c d e"]]
    rouge = generation_metrics(["a b c d"], refs, ["rouge_l"])["rouge_l"]
    assert rouge == pytest.approx(75.0)  # LCS "a c d": P = R = 3/4 against the best reference
    assert generation_metrics(["the cat sat on the mat today"], [["a dog", "the cat sat on the mat today"]],
                              ["bleu"])["bleu"] == pytest.approx(100.0)
    assert generation_metrics(["zzz qqq"], [["the cat sat on the mat"]], ["bleu"])["bleu"] == pytest.approx(0.0)
    # different reference counts per example are allowed
    both = generation_metrics(["the cat sat on the mat today", "a big red dog ran home fast"],
                              [["the cat sat on the mat today"], ["x", "a big red dog ran home fast"]], ["bleu"])
    assert both["bleu"] == pytest.approx(100.0)


# ---------------------------------------------------------------- E2E metric set: NIST, METEOR, CIDEr
REFS = [["The Eagle is a pub near the river.", "There is a pub called The Eagle by the river."],
        ["Alimentum serves cheap Chinese food.", "A cheap Chinese place is Alimentum."],
        ["The Golden Palace is a coffee shop in the city centre.", "Golden Palace is a city centre coffee shop."]]
# each hypothesis repeats one of its references: the first, the second, the first
SAME = [REFS[0][0], REFS[1][1], REFS[2][0]]
WRONG = ["A dog ran home.", "It rains in Cambridge today.", "Nothing to see here."]
E2E_SET = ["bleu", "nist", "meteor", "rouge_l", "cider"]


def _java_children() -> list:
    import psutil

    return [p for p in psutil.Process().children(recursive=True) if "java" in p.name()]


@pytest.fixture(scope="module")
def e2e_set_scores():
    """One run of the whole set (METEOR's JVM takes ~10 s of CPU to load its paraphrase table)."""
    scores = generation_metrics(SAME, REFS, E2E_SET)
    return scores, _java_children()


def test_e2e_set_on_references_themselves(e2e_set_scores):
    scores, java_left = e2e_set_scores
    assert set(scores) == set(E2E_SET)
    assert not java_left  # METEOR's (and the tokenizer's) java processes are ended and reaped
    # METEOR takes the best reference: 100 up to its fragmentation penalty, also where the match is the 2nd one
    assert scores["meteor"] > 99
    assert scores["bleu"] == pytest.approx(100.0) and scores["rouge_l"] == pytest.approx(100.0)
    assert scores["cider"] > 0 and scores["nist"] > 0


def test_cider_and_nist_prefer_the_right_hypotheses(e2e_set_scores):
    right, _ = e2e_set_scores
    wrong = generation_metrics(WRONG, REFS, ["nist", "cider"])
    assert right["cider"] > wrong["cider"] + 1 and right["nist"] > wrong["nist"] + 1


def test_every_reference_counts_alike():
    """Reference order does not matter: a hypothesis equal to its 2nd reference scores as one equal to its 1st."""
    names = ["bleu", "nist", "rouge_l", "cider"]  # METEOR: the best-reference case is in the test above
    swapped = [refs[::-1] for refs in REFS]
    assert generation_metrics(SAME, swapped, names) == pytest.approx(generation_metrics(SAME, REFS, names))


def test_nist_by_hand():
    # references: the 2, cat 1, sat 2, dog 1 (6 words) -> info(the) = info(sat) = log2(6/2), info(cat) = log2 6;
    # info(the cat) = log2(#the / #the cat) = 1, info(cat sat) = log2(1/1) = 0, info(the cat sat) = 0.
    # The hypothesis is lowercased and 13a-tokenized to "the cat sat ." (4 tokens, none longer, so orders 1-4):
    # 1-grams log2(3 * 6 * 3) / 4, 2-grams (1 + 0) / 3, 3-grams 0 / 2, 4-grams 0 / 1; not shorter: no penalty
    nist = generation_metrics(["The cat sat."], [["the cat sat", "the dog sat"]], ["nist"])["nist"]
    assert nist == pytest.approx(math.log2(54) / 4 + 1 / 3)
    assert generation_metrics(["", ""], [["a b"], ["c"]], ["nist"]) == {"nist": 0.0}  # no division by zero


def test_metrics_not_asked_for_are_not_computed(monkeypatch):
    import subprocess

    import pycocoevalcap.meteor.meteor as meteor

    def no(*args, **kwargs):
        raise AssertionError("started although not asked for")

    monkeypatch.setattr(meteor, "Meteor", no)
    assert set(generation_metrics(SAME, REFS, ["cider"])) == {"cider"}  # tokenizer only, no METEOR
    monkeypatch.setattr(subprocess, "Popen", no)
    no_java = ["bleu", "nist", "rouge_l"]
    assert set(generation_metrics(SAME, REFS, no_java)) == set(no_java)


def test_meteor_process_ended_when_scoring_fails(monkeypatch):
    """The package's wrapper keeps its lock and its process when a score fails; ours ends both."""
    import subprocess

    import pycocoevalcap.meteor.meteor as meteor

    from bench import evaluation

    popen, made = subprocess.Popen, []

    class Echo(meteor.Meteor):  # `cat` for java: the SCORE line comes back, not a number, so scoring fails
        def __init__(self):
            monkeypatch.setattr(subprocess, "Popen", lambda cmd, **kw: popen(["cat"], **kw))
            super().__init__()
            monkeypatch.setattr(subprocess, "Popen", popen)
            made.append(self)

    monkeypatch.setattr(meteor, "Meteor", Echo)
    with pytest.raises(ValueError):
        evaluation._meteor({0: ["a b"]}, {0: ["a b"]})
    assert made[0].meteor_p.returncode is not None and not made[0].lock.locked()
