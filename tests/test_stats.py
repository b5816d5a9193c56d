"""Claim verdicts and intervals on synthetic per-example outputs with a known truth (bench/report/stats.py,
bench/report/verdicts.py): a clear difference is reproduced, a reversed one contradicted, a real gain short of a
superiority margin "did not clear the margin" (not contradicted), identical systems are inconclusive (and
reproduced in at most 5% of simulated null pairs), verdicts do not depend on the bootstrap seed, corpus metrics
(BLEU, NIST, METEOR, CIDEr) are resampled at corpus level and paired. Coverage: tests/test_coverage.py."""

import numpy as np
import pytest

from bench.harness.evaluation import score_outputs
from bench.report.stats import System, _bleu_statistics, _corpus_statistics, _end_meteor
from bench.report.stats import interval as bootstrap
from bench.report.verdicts import Comparison, decide, verdict_of

SEEDS, EXAMPLES = 3, 200


def classifier(rng, accuracy: float, seeds: int = SEEDS, examples: int = EXAMPLES, space: str = "sst2/sst2") -> System:
    """A system whose answers are right with probability `accuracy`, independently per seed and example."""
    gold = np.arange(examples) % 2
    outputs = []
    for _ in range(seeds):
        right = rng.random(examples) < accuracy
        outputs.append(
            [
                {"id": f"ex{i}", "gold": int(g), "pred": int(g if r else 1 - g)}
                for i, (g, r) in enumerate(zip(gold, right))
            ]
        )
    values = np.array([100.0 * np.mean([r["pred"] == r["gold"] for r in rows]) for rows in outputs])
    return System(
        space=space,
        metric="accuracy",
        seeds=tuple(range(seeds)),
        values=values,
        outputs=outputs,
        scorer=lambda rows: score_outputs(rows, ["accuracy"])["accuracy"],
    )


def verdict(
    left: System, right: System, margin: float = 0.0, side: int = 1, seed: int = 0, hypothesis: str = "superiority"
) -> tuple[str, str]:
    comparison = Comparison(
        "all", [], margin, side, "left vs right", lambda: bootstrap([left, right], [1, -1], seed=seed)
    )
    found = decide([comparison], hypothesis)
    f = found[0]
    iv = f.interval
    line = f.reason if iv is None else f"Δ {iv.estimate:+.2f} [{iv.low:+.2f}, {iv.high:+.2f}] ({iv.method}) {f.reason}"
    return verdict_of(found)[0], line


def test_clear_difference_is_reproduced_and_reversed_contradicted():
    rng = np.random.default_rng(1)
    strong, weak = classifier(rng, 0.85), classifier(rng, 0.65)
    found, line = verdict(strong, weak)
    assert found == "reproduced" and "Δ +" in line and "seeds (t) + examples (analytic)" in line
    assert verdict(weak, strong)[0] == "contradicted"
    found, line = verdict(strong, weak, margin=50)  # a 20-point gain is not a 50-point one, but it is no reversal
    assert found == "inconclusive" and "did not clear the margin" in line
    assert verdict(weak, strong, side=-1)[0] == "reproduced"  # claim: left below right
    assert verdict(weak, strong, margin=5, hypothesis="non_inferiority")[0] == "contradicted"  # 20 points worse
    assert verdict(strong, weak, margin=5, hypothesis="equivalence")[0] == "contradicted"  # 20 apart, not within 5


def test_identical_systems_are_inconclusive_and_rarely_reproduced():
    rng = np.random.default_rng(2)
    found = [verdict(classifier(rng, 0.75), classifier(rng, 0.75))[0] for _ in range(200)]
    assert found.count("reproduced") <= 0.05 * len(found)
    assert found.count("inconclusive") >= 0.9 * len(found)
    same = classifier(rng, 0.75)
    found, line = verdict(same, same)  # one system against itself: the difference is 0 in every seed and example
    assert found == "inconclusive" and "Δ +0.00 [+0.00, +0.00]" in line
    assert verdict(same, same, margin=1, hypothesis="equivalence")[0] == "reproduced"


def test_an_inconclusive_comparison_gets_a_plan_with_more_seeds():
    """The power planner (bench/report/power.py) asks for more than a comparison has when it was inconclusive."""
    from bench.report.power import plan

    rng = np.random.default_rng(3)
    left, right = classifier(rng, 0.80, seeds=3, examples=60), classifier(rng, 0.74, seeds=3, examples=60)
    found = decide([Comparison("all", [], 0.0, 1, "", lambda: bootstrap([left, right], [1, -1]))], "superiority")
    assert found[0].verdict == "inconclusive"
    p = plan(
        found[0], "superiority", 0.025, 1, found[0].interval.estimate, cap=400, rows_cost=lambda get: (60.0, 30.0, 10.0)
    )
    assert p["goal"] == "reproduce" and (p["seeds"] > 3 or p["examples"] > 60) and p["examples"] <= 400
    beyond = plan(found[0], "superiority", 0.025, 1, 0.0, cap=400, rows_cost=lambda get: (60.0, 30.0, 10.0))
    assert beyond["goal"] is None and "neither side" in beyond["why"]  # a true Δ of 0 never clears a superiority


def test_verdicts_do_not_depend_on_the_bootstrap_seed():
    rng = np.random.default_rng(4)
    cases = {
        "reproduced": (classifier(rng, 0.85), classifier(rng, 0.70)),
        "contradicted": (classifier(rng, 0.60), classifier(rng, 0.80)),
        "inconclusive": (classifier(rng, 0.75), classifier(rng, 0.75)),
    }
    for expected, (left, right) in cases.items():
        assert {verdict(left, right, seed=seed)[0] for seed in range(8)} == {expected}
    first, again = bootstrap([cases["inconclusive"][0]], [1.0]), bootstrap([cases["inconclusive"][0]], [1.0])
    assert (first.low, first.high) == (again.low, again.high)  # the report is deterministic


def test_single_system_interval_covers_its_accuracy():
    rng = np.random.default_rng(5)
    system = classifier(rng, 0.7, seeds=4, examples=400)
    interval = bootstrap([system], [1.0])
    assert interval.low < system.values.mean() < interval.high
    assert 60 < interval.low and interval.high < 80 and interval.high - interval.low < 12
    seeds_only = bootstrap([System(system.space, "accuracy", system.seeds, system.values, None, system.scorer)], [1.0])
    assert seeds_only.method.startswith("t over seeds")
    one_seed = System(system.space, "accuracy", (0,), system.values[:1], None, system.scorer)
    assert bootstrap([one_seed], [1.0]) is None  # no outputs, one seed: no interval


def generator(hypotheses, references, space="e2e/e2e") -> System:
    rows = [{"id": f"mr{i}", "gold": refs, "hyp": h} for i, (h, refs) in enumerate(zip(hypotheses, references))]
    bleu = score_outputs(rows, ["bleu"])["bleu"]
    return System(
        space=space,
        metric="bleu",
        seeds=(0,),
        values=np.array([bleu]),
        outputs=[rows],
        scorer=lambda subset: score_outputs(subset, ["bleu"])["bleu"],
    )


def test_bleu_is_resampled_at_corpus_level_and_paired():
    rng = np.random.default_rng(6)
    words = "the cafe serves cheap italian food near the river in the city centre with a family friendly".split()
    references = [[" ".join(rng.choice(words, 9)) for _ in range(int(rng.integers(1, 4)))] for _ in range(30)]
    good = generator([refs[0] for refs in references], references)
    noisy = generator([" ".join(rng.choice(words, 9)) for _ in references], references)
    stats, score = _bleu_statistics(noisy.outputs[0])
    for _ in range(5):  # a replicate's BLEU is the corpus BLEU of the drawn examples, not a mean of sentence BLEUs
        drawn = rng.integers(30, size=30)
        assert score(stats[drawn].sum(axis=0)) == pytest.approx(noisy.scorer([noisy.outputs[0][i] for i in drawn]))
    interval = bootstrap([noisy], [1.0])
    assert interval.method.startswith("seeds (t) + examples (10,000 bootstrap replicates)")
    assert interval.low < noisy.values[0] < interval.high
    same = bootstrap([noisy, noisy], [1.0, -1.0])
    assert (same.low, same.high) == (0.0, 0.0)  # paired: both sides see the same drawn examples
    diff = bootstrap([good, noisy], [1.0, -1.0])
    assert diff.low > 0 and diff.estimate == pytest.approx(good.values[0] - noisy.values[0])


@pytest.mark.parametrize("scorer", ["webnlg-2017", "dart"])
def test_multi_bleu_scorers_are_resampled_from_statistics(scorer):
    """WebNLG's and DART's BLEU (multi-bleu.perl on their own normalisation, no smoothing, 3 reference slots) decompose
    like E2E's: a replicate's statistics give the scorer's BLEU of the drawn examples, so 10,000 replicates, not 200
    re-scorings. Mixed case, punctuation and 1-4 references exercise the normalisation and the empty slots."""
    rng = np.random.default_rng(9)
    words = "The Cafe, serves cheap Italian food; near the river (in) the City centre.".split()
    references = [[" ".join(rng.choice(words, 8)) for _ in range(int(rng.integers(1, 5)))] for _ in range(40)]
    rows = [{"id": f"t{i}", "gold": refs, "hyp": " ".join(rng.choice(words, 8))} for i, refs in enumerate(references)]
    rescore = lambda subset: score_outputs(subset, ["bleu"], scorer)["bleu"]  # noqa: E731
    system = System("webnlg/test", "bleu", (0,), np.array([rescore(rows)]), [rows], rescore, scorer)
    stats, score = _bleu_statistics(rows, scorer)
    assert score(stats.sum(axis=0)) == pytest.approx(system.values[0], abs=1e-9)
    for _ in range(5):
        drawn = rng.integers(40, size=40)
        assert score(stats[drawn].sum(axis=0)) == pytest.approx(rescore([rows[i] for i in drawn]), abs=1e-9)
    assert bootstrap([system], [1.0]).method.startswith("seeds (t) + examples (10,000 bootstrap replicates)")


def test_metrics_without_statistics_are_rescored_on_every_replicate():
    rng = np.random.default_rng(8)
    accurate = classifier(rng, 0.8, seeds=2, examples=80)
    f1 = System(
        accurate.space,
        "f1",
        accurate.seeds,
        np.array([score_outputs(rows, ["f1"])["f1"] for rows in accurate.outputs]),
        accurate.outputs,
        lambda rows: score_outputs(rows, ["f1"])["f1"],
    )
    interval = bootstrap([f1], [1.0], corpus_resamples=100)
    assert interval.method.startswith("seeds (t) + examples (100 bootstrap replicates)")
    assert interval.low < f1.values.mean() < interval.high
    words = "a b c d e f g h".split()
    references = [[" ".join(rng.choice(words, 6))] for _ in range(20)]
    changed = generator([" ".join(rng.choice(words, 6)) for _ in references], references)
    changed.values = changed.values + 1.0  # BLEU computed otherwise than sacrebleu's statistics give: re-scored
    assert "(20 bootstrap replicates)" in bootstrap([changed], [1.0], corpus_resamples=20).method


def test_systems_pair_only_on_shared_example_ids():
    rng = np.random.default_rng(7)
    left, right = classifier(rng, 0.8), classifier(rng, 0.6)
    right.outputs = [rows[:150] for rows in right.outputs]  # scored on fewer examples: pairs on those 150
    assert bootstrap([left, right], [1.0, -1.0]) is not None
    for rows in right.outputs:
        for row in rows:
            row["id"] = "other-" + row["id"]
    assert bootstrap([left, right], [1.0, -1.0]) is None
    found, line = verdict(left, right)
    assert found == "inconclusive" and "share no eval examples" in line


def test_an_eval_set_with_a_repeated_example_gets_its_interval():
    """SST-2 dev subsets hold a few duplicate sentences: each occurrence is its own example (evaluation.example_ids),
    so the bootstrap draws over all of them."""
    import torch

    from bench.harness.evaluation import classification_outputs
    from bench.harness.tasks import Example

    examples = [Example(fields={"sentence": s}, label=i % 2) for i, s in enumerate(["a", "b", "a", "c", "d", "e"])]
    rows = classification_outputs(torch.tensor([[0.0, -1.0]] * 6), examples)  # always predicts label 0
    system = System(
        space="t/e", metric="accuracy", seeds=(0,), values=np.array([50.0]), outputs=[rows], scorer=lambda r: 0.0
    )
    interval = bootstrap([system], [1.0])
    assert interval is not None and interval.low <= 50.0 <= interval.high and interval.low < interval.high


@pytest.fixture(scope="module", autouse=True)
def meteor_ended():
    """The METEOR process the report keeps for all its systems ends at exit (atexit); here with this module, so that
    later tests see no java process left (tests/test_scorers.py)."""
    yield
    _end_meteor()


def corpus_system(metric: str, hypotheses, references, scorer_name: str = "e2e-metrics") -> System:
    from bench.harness.scorers import generation_metrics

    rows = [{"id": f"mr{i}", "gold": refs, "hyp": h} for i, (h, refs) in enumerate(zip(hypotheses, references))]
    rescore = lambda subset: generation_metrics(  # noqa: E731
        [r["hyp"] for r in subset],
        [r["gold"] for r in subset],
        [metric],
        scorer_name,
    )[metric]
    return System(
        space="e2e/e2e",
        metric=metric,
        seeds=(0,),
        values=np.array([rescore(rows)]),
        outputs=[rows],
        scorer=rescore,
        scorer_name=scorer_name,
    )


@pytest.mark.parametrize(
    "metric, scorer_name",
    [("nist", "e2e-metrics"), ("cider", "e2e-metrics"), ("meteor", "e2e-metrics"), ("meteor", "webnlg-2017")],
)
def test_nist_cider_meteor_are_resampled_at_corpus_level_with_one_seed(metric, scorer_name):
    """A replicate is the metric of the drawn multiset of examples (information weights, IDF and METEOR's
    statistics from the drawn examples, each as often as drawn), as bench.harness.scorers re-scores it."""
    rng = np.random.default_rng(9)
    words = "the Eagle is a cheap coffee shop near Burger King in the city centre , it is family-friendly .".split()
    references = [
        [" ".join(rng.choice(words, int(rng.integers(6, 12)))) for _ in range(int(rng.integers(1, 4)))]
        for _ in range(24)
    ]
    hypotheses = [refs[0] if i % 3 else " ".join(rng.choice(words, 8)) for i, refs in enumerate(references)]
    system = corpus_system(metric, hypotheses, references, scorer_name)
    rows = system.outputs[0]
    score = _corpus_statistics(metric, scorer_name, tuple(hypotheses), tuple(tuple(r) for r in references))
    assert score(np.ones((1, len(rows))))[0] == pytest.approx(system.values[0], rel=1e-12)
    drawn = [rng.integers(len(rows), size=len(rows)) for _ in range(2)]  # each re-score of METEOR starts a JVM
    counts = np.array([np.bincount(d, minlength=len(rows)) for d in drawn], dtype=float)
    expected = [system.scorer([rows[j] for j in d]) for d in drawn]
    assert expected[0] != expected[1]  # the draws differ, and so do their scores
    assert score(counts) == pytest.approx(expected, rel=1e-12)
    interval = bootstrap([system], [1.0], resamples=2_000)
    assert interval.method.startswith("seeds (t) + examples (2,000 bootstrap replicates)")
    assert interval.low < system.values[0] < interval.high
    same = bootstrap([system, system], [1.0, -1.0], resamples=2_000)
    assert (same.low, same.high) == (0.0, 0.0)  # paired: both sides see the same drawn examples
    system.values = system.values + 1.0  # a record the statistics do not reproduce: seeds only, none with one seed
    assert bootstrap([system], [1.0], resamples=2_000) is None


def test_without_java_meteor_and_cider_fall_back_to_seeds(monkeypatch):
    import shutil

    system = corpus_system(
        "cider",
        ["the eagle is a coffee shop", "a cheap shop", "a shop near the river"],
        [["the eagle is a shop"], ["a shop", "a cheap shop"], ["a shop by the river"]],
    )
    system.seeds, system.values, system.outputs = (0, 1), np.repeat(system.values, 2), system.outputs * 2
    assert bootstrap([system], [1.0], resamples=1_000).method.startswith("seeds (t) + examples (1,000 bootstrap")
    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "java" else which(name, *a, **k))
    assert bootstrap([system], [1.0], resamples=1_000).method.startswith("t over seeds")  # still runs, with less
