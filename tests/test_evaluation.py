"""Batching, rank scoring, decoding and metrics on a tiny random model, against brute force or by hand."""
import collections
import dataclasses
import math

import pytest
import torch

import itertools

from bench.batches import LENGTH_WINDOW, causal_lm_batch, continuation_ids, prompt_ids, training_batches
from bench.evaluation import classification_metrics, clean_generation, generate, rank_scores
from bench.scorers import generation_metrics
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


def test_rouge_score_scorer_by_hand():
    """XSum's scorer (rouge-score, stemmed F): the best reference's F-measure, averaged over examples."""
    refs = [["x y z w", "a c d e"]]
    rouge = generation_metrics(["a b c d"], refs, ["rouge_l"], "rouge-score")["rouge_l"]
    assert rouge == pytest.approx(75.0)  # LCS "a c d": P = R = 3/4 against the best reference
    two = generation_metrics(["a b c d", "a b"], [["a b c d"], ["a b c d"]], ["rouge_1", "rouge_2"], "rouge-score")
    assert two["rouge_1"] == pytest.approx(100 * (1 + 2 / 3) / 2)  # P 1, R 1/2 -> F 2/3 for the second
    assert two["rouge_2"] == pytest.approx(100 * (1 + 1 / 2) / 2)  # 1 of 3 reference bigrams: F 2*(1*1/3)/(4/3)


def test_e2e_bleu_by_hand():
    assert generation_metrics(["the cat sat on the mat today"], [["a dog", "the cat sat on the mat today"]],
                              ["bleu"])["bleu"] == pytest.approx(100.0)
    assert generation_metrics(["zzz qqq"], [["the cat sat on the mat"]], ["bleu"])["bleu"] == pytest.approx(0.0)
    # different reference counts per example are allowed; lowercased, as mteval scores by default
    both = generation_metrics(["The cat sat on the mat today", "a big red dog ran home fast"],
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
    """mteval-v13a NIST, derived by hand (mteval itself was not run here: these are its definitions)."""
    # references: the 2, cat 1, sat 2, dog 1 (6 words) -> info(the) = info(sat) = log2(6/2), info(cat) = log2 6;
    # info(the cat) = log2(#the / #the cat) = 1, info(cat sat) = log2(1/1) = 0, info(the cat sat) = 0.
    # The hypothesis is lowercased and 13a-tokenized to "the cat sat ." (4 tokens):
    # 1-grams log2(3 * 6 * 3) / 4, 2-grams (1 + 0) / 3, 3-grams 0 / 2, 4-grams 0 / 1, 5-grams 0;
    # not shorter than the average reference (6 words / 2 reference sets = 3): no penalty
    nist = generation_metrics(["The cat sat."], [["the cat sat", "the dog sat"]], ["nist"])["nist"]
    assert nist == pytest.approx(math.log2(54) / 4 + 1 / 3)
    assert generation_metrics(["", ""], [["a b"], ["c"]], ["nist"]) == {"nist": 0.0}  # no division by zero


def test_nist_clips_at_the_highest_count_in_any_reference():
    # references "a b", "a a": a 3, b 1 (4 words); a a 1, a b 1 -> info(a) = log2(4/3), info(b) = 2,
    # info(a a) = info(a b) = log2(3/1). Hypothesis "a a b": both a's match ("a a" has two; nltk, scoring
    # against one reference at a time, would not count them both with b), b matches;
    # 1-grams (2 log2(4/3) + 2) / 3, 2-grams 2 log2 3 / 2, 3-gram "a a b" 0 / 1; average reference length 2 < 3
    nist = generation_metrics(["a a b"], [["a b", "a a"]], ["nist"])["nist"]
    assert nist == pytest.approx((2 * math.log2(4 / 3) + 2) / 3 + math.log2(3))


def test_nist_penalty_against_the_average_reference_length():
    # 2 reference sets (e2e-metrics pads the second MR's missing reference with an empty one): 4 + 6 + 2 = 12
    # reference words / 2 = 6 on average; the hypotheses have 5 words -> penalty exp(-beta ln(5/6)^2) with
    # mteval's beta = -ln 0.5 / ln(1.5)^2. Unigram counts a b c d 2, e f x y 1: info log2 6 for a-d, log2 12
    # for x; every longer reference n-gram is as frequent as its prefix (info 0).
    nist = generation_metrics(["a b c d", "x"], [["a b c d", "a b c d e f"], ["x y"]], ["nist"])["nist"]
    beta = -math.log(0.5) / math.log(1.5) ** 2
    assert nist == pytest.approx((4 * math.log2(6) + math.log2(12)) / 5 * math.exp(-beta * math.log(5 / 6) ** 2))


def test_e2e_rouge_l_is_coco_captions():
    """coco-caption ROUGE-L (pycocoevalcap's Rouge on PTB tokens): the highest precision and the highest recall
    over references, possibly from different ones, F with beta 1.2 (derived by hand)."""
    # 1st: "a b" gives P 2/4, R 1; "a b c d e f g h" gives P 1, R 4/8 -> max P 1, max R 1 -> 1
    #      (rouge-score's best-reference F would be 2/3)
    # 2nd: P 1/2, R 1 -> (1 + 1.44) * 0.5 / (1 + 1.44 * 0.5) = 1.22 / 1.72
    rouge = generation_metrics(["a b c d", "a b c d"], [["a b", "a b c d e f g h"], ["a b"]], ["rouge_l"])
    assert rouge["rouge_l"] == pytest.approx(100 * (1 + 1.22 / 1.72) / 2)


# ---------------------------------------------------------------- WebNLG 2017 and DART: multi-bleu.perl
def test_multi_bleu_by_hand():
    from bench.scorers import multi_bleu

    # closest reference length 7 for 5 words, all n-grams match: exp(1 - 7/5)
    assert multi_bleu(["a b c d e"], [["a b c d e f g"]], lowercase=True, slots=3) == pytest.approx(100 * math.exp(-0.4))
    # a missing reference is an empty line of its file: length 0, closer to 4 words than 10 -> no penalty
    assert multi_bleu(["a b c d"], [["a b c d e f g h i j"]], lowercase=True, slots=3) == pytest.approx(100.0)
    assert multi_bleu(["a b c d"], [["a b c d e f g h i j"]], lowercase=True, slots=1) == pytest.approx(
        100 * math.exp(1 - 10 / 4))
    # no smoothing: no matching 4-gram -> 0; -lc lowercases, without it case counts
    assert multi_bleu(["a b c x"], [["a b c d"]], lowercase=True, slots=1) == 0.0
    assert multi_bleu(["A B C D"], [["a b c d"]], lowercase=True, slots=1) == pytest.approx(100.0)
    assert multi_bleu(["A B C D"], [["a b c d"]], lowercase=False, slots=1) == 0.0


def test_webnlg_scorer_normalises_and_keeps_three_references():
    pytest.importorskip("unidecode")
    ref = "Adolfo Suárez Madrid–Barajas Airport's runway is 3,500 m long."
    # unidecoded, lowercased, every non-word character a token: case, accents and spacing do not count
    same = generation_metrics(["ADOLFO SUAREZ Madrid - Barajas airport ' s runway is 3 , 500 m long ."], [[ref]],
                              ["bleu"], "webnlg-2017")
    assert same["bleu"] == pytest.approx(100.0)
    hyp = "the cat sat on the mat"
    assert generation_metrics([hyp], [["x y", "x z", "z z", hyp]], ["bleu"], "webnlg-2017")["bleu"] == 0.0
    assert generation_metrics([hyp], [["x y", "x z", hyp, "z z"]], ["bleu"], "webnlg-2017")["bleu"] == pytest.approx(100.0)


def test_dart_scorer_is_case_sensitive_on_raw_text():
    hyp = "The cat sat on the mat."
    assert generation_metrics([hyp], [[hyp]], ["bleu"], "dart")["bleu"] == pytest.approx(100.0)
    # "The" vs "the", "mat." vs "mat": 1-grams 4/6, 2-grams 3/5, 3-grams 2/4, 4-grams 1/3
    lower = generation_metrics([hyp], [["the cat sat on the mat"]], ["bleu"], "dart")["bleu"]
    assert lower == pytest.approx(100 * (4 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)


def test_scorer_must_define_the_metrics():
    from bench.errors import BenchError
    from bench.scorers import check_scorer

    with pytest.raises(BenchError, match="scorer webnlg-2017 does not define nist"):
        generation_metrics(["a"], [["a"]], ["bleu", "nist"], "webnlg-2017")
    with pytest.raises(BenchError, match="unknown scorer 'sacrebleu'"):
        check_scorer("sacrebleu", ["bleu"], "task x")


def test_every_generation_eval_set_has_its_papers_scorer():
    from bench.tasks import eval_scorer, get_task

    assert {s: eval_scorer(get_task("webnlg"), s) for s in get_task("webnlg").eval_sets + ["dev"]} == {
        "webnlg": "webnlg-2017", "test_seen": "webnlg-2017", "test_unseen": "webnlg-2017", "dart": "dart",
        "dev": "webnlg-2017"}
    assert eval_scorer(get_task("e2e"), "e2e") == "e2e-metrics"
    assert eval_scorer(get_task("xsum"), "xsum") == "rouge-score"
    assert eval_scorer(get_task("sst2"), "sst2") is None


def test_metrics_not_asked_for_are_not_computed(monkeypatch):
    import subprocess

    import pycocoevalcap.meteor.meteor as meteor

    def no(*args, **kwargs):
        raise AssertionError("started although not asked for")

    monkeypatch.setattr(meteor, "Meteor", no)
    assert set(generation_metrics(SAME, REFS, ["cider"])) == {"cider"}  # tokenizer only, no METEOR
    monkeypatch.setattr(subprocess, "Popen", no)
    no_java = ["bleu", "nist"]
    assert set(generation_metrics(SAME, REFS, no_java)) == set(no_java)
    assert set(generation_metrics(SAME, REFS, ["rouge_l"], "rouge-score")) == {"rouge_l"}


def test_meteor_process_ended_when_scoring_fails(monkeypatch):
    """The package's wrapper keeps its lock and its process when a score fails; ours ends both."""
    import subprocess

    import pycocoevalcap.meteor.meteor as meteor

    from bench import scorers

    popen, made = subprocess.Popen, []

    class Echo(meteor.Meteor):  # `cat` for java: the SCORE line comes back, not a number, so scoring fails
        def __init__(self):
            monkeypatch.setattr(subprocess, "Popen", lambda cmd, **kw: popen(["cat"], **kw))
            super().__init__()
            monkeypatch.setattr(subprocess, "Popen", popen)
            made.append(self)

    monkeypatch.setattr(meteor, "Meteor", Echo)
    with pytest.raises(ValueError):
        scorers._meteor({0: ["a b"]}, {0: ["a b"]})
    assert made[0].meteor_p.returncode is not None and not made[0].lock.locked()
