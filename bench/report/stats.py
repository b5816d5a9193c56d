"""Confidence intervals for the report: one system's score, or a weighted sum of systems' scores (a paired
difference, a difference of differences), with seeds and eval examples as two levels of sampling
(docs/statistics.md gives the model, the choices and the simulation that checks them).

A *system* is one summary row: a method variant's cells (one per seed) on one eval set and metric. The estimate is
the weighted sum of the systems' seed means. Its variance has two parts:
- seeds: systems with the same seeds are paired by seed (seed i of each trained on the same sample); per seed group
  the sample variance s² of the per-seed values of the weighted sum, over n: s²/n, with n - 1 degrees of freedom.
  With 3-10 seeds this is where a percentile bootstrap under-covers (3 seeds: it spans the min-max of 3 values at
  any level), and why the interval uses Student's t.
- examples: every seed is scored on the same eval examples, so the example draw is shared by all seeds (and by
  every system on one eval set: paired by example id). Its variance is that of the estimate over draws of the
  examples with the seeds held fixed: analytic (sample variance / m) for metrics that are means over examples
  (accuracy, an ensemble's average prompt, ROUGE as rouge-score and coco-caption average it), else from bootstrap
  replicates that re-score the drawn examples' corpus metric: 10,000 where it follows from per-example statistics,
  checked to give the record's value -- BLEU (sacrebleu's per-sentence n-gram statistics, summed), NIST and CIDEr
  (per-example n-gram counts; the information weights and IDF from the drawn examples' references) and METEOR (each
  segment's statistics from the jar, summed and scored by the jar) -- and 200 for other corpus metrics (F1, an
  ensemble's best prompt), re-scored by the method's own `score_outputs`.
Both parts contain the seed-by-example interaction once (s² sees each seed's own example noise; the example draw
sees it averaged over seeds), so it is subtracted once: (mean over seeds of each seed's example variance - the
variance of the seed mean) / (n - 1), per group. The interval is estimate ± t(df) · se with Welch-Satterthwaite
df. NIST, METEOR and CIDEr whose statistics do not give the record's value, and records without per-example
outputs, get the seed part only (t over seeds); with one seed the seed variance cannot be estimated (the interval
is over examples only, and says so); with one seed and no outputs there is no interval. Replicates start from a
fixed generator seed: the same records give the same intervals.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import math
import shutil
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np

from bench.api.metrics import per_example

RESAMPLES = 10_000
CORPUS_RESAMPLES = 200
SEEDS_ONLY = {"meteor", "cider", "nist"}  # too slow to re-score per replicate: over seeds unless decomposed
NEEDS_JAVA = {"meteor", "cider"}  # the METEOR jar; CIDEr's PTBTokenizer. Without Java: over seeds only
CORPUS_BLOCK = 4_000_000  # array elements per block of replicates in the NIST/CIDEr statistics: bounds memory
AVERAGED = {"rouge_1", "rouge_2", "rouge_l"}  # rouge-score F-measures averaged over examples (checked per record)
LEVEL = 0.95
BOOTSTRAP_SEED = 0
CHUNK = 2_000  # replicates per matrix product: bounds memory on large eval sets


@dataclass
class System:
    """One summary row's data: per seed the record's value, and per seed the eval set's per-example outputs
    (None when a record has none)."""

    space: str  # the eval examples it is scored on (task/eval set): systems in one space are paired by example
    metric: str
    seeds: tuple
    values: np.ndarray
    outputs: list[list[dict]] | None
    scorer: Callable[[list[dict]], float]  # the metric of a list of output rows
    # the eval set's official scorer (bench/harness/scorers.py), for generation metrics
    scorer_name: str = "e2e-metrics"


@dataclass
class Interval:
    estimate: float
    low: float
    high: float
    method: str  # how it was computed, for the report
    draws: np.ndarray | None = None  # a bootstrap distribution, where one gave the interval (curves, spreads)
    se: float = math.nan  # standard error (t intervals)
    df: float = math.inf  # its degrees of freedom
    variance: "Variance | None" = None  # its components, for the power planner

    def bound(self, alpha: float, side: int) -> float:
        """The one-sided (1 - alpha) confidence bound on the claim's side: lower (side +1) or upper (side -1)."""
        from scipy import stats

        if not math.isfinite(self.se):  # a percentile interval: its own (two-sided) ends
            return self.low if side > 0 else self.high
        q = stats.t.ppf(1 - alpha, self.df) if math.isfinite(self.df) else stats.norm.ppf(1 - alpha)
        return self.estimate - side * q * self.se

    def at(self, level: float) -> tuple[float, float]:
        """The two-sided interval at another level."""
        alpha = (1 - level) / 2
        return self.bound(alpha, 1), self.bound(alpha, -1)


def _aligned(systems: list[System]) -> dict[str, list[str]] | None:
    """Per space, the example ids every seed of every system in it was scored on, in a fixed order."""
    spaces: dict[str, set] = {}
    for system in systems:
        for rows in system.outputs:
            ids = {r["id"] for r in rows}
            spaces[system.space] = spaces[system.space] & ids if system.space in spaces else ids
    if any(not ids for ids in spaces.values()):
        return None
    return {space: sorted(ids) for space, ids in spaces.items()}


def _weights(rng, n: int, count: int) -> np.ndarray:
    """`count` draws of n of n items with replacement, as (count, n) multiplicities / n."""
    drawn = rng.integers(n, size=(count, n)) + n * np.arange(count)[:, None]
    return np.bincount(drawn.ravel(), minlength=count * n).reshape(count, n) / n


def interval(
    systems: list[System],
    weights: list[float],
    level: float = LEVEL,
    seed: int = BOOTSTRAP_SEED,
    resamples: int = RESAMPLES,
    corpus_resamples: int = CORPUS_RESAMPLES,
) -> Interval | None:
    """The interval of sum_i weights[i] * score(systems[i]) at `level` (two-sided); None when it cannot be computed
    (one seed and no per-example outputs, or no shared examples). Two levels, as the module docstring says: per-seed
    values give the seed term (t, seeds - 1 df), the eval examples' sampling variance (analytic for means over
    examples, else from example-only bootstrap replicates) the example term, less the seed-by-example part that both
    contain; Satterthwaite's degrees of freedom combine them."""
    estimate = float(sum(w * s.values.mean() for s, w in zip(systems, weights)))
    groups = _seed_groups(systems, weights)
    with_outputs = all(s.outputs is not None for s in systems)
    ids = _aligned(systems) if with_outputs else None
    if with_outputs and ids is None:
        return None
    parts = None
    if with_outputs:
        aligned = []  # per system, per seed: the output rows of the space's shared examples, in one order
        for system in systems:
            order = {i: k for k, i in enumerate(ids[system.space])}
            aligned.append(
                [sorted((r for r in rows if r["id"] in order), key=lambda r: order[r["id"]]) for rows in system.outputs]
            )
        parts = [_decomposed(s, by_seed) for s, by_seed in zip(systems, aligned)]
    if not with_outputs or any(p is None and s.metric in SEEDS_ONLY for s, p in zip(systems, parts)):
        if any(len(d) < 2 for d in groups.values()):
            return None
        return two_level(estimate, groups, 0.0, {}, 0, level, "t over seeds (no per-example outputs)")
    examples = min(len(i) for i in ids.values())
    if all(p is not None and all(part[0] == "mean" for part in p) for p in parts):
        return interval_of_means(
            [(s.seeds, s.space, np.stack([x[1] for x in p])) for s, p in zip(systems, parts)], weights, level, estimate
        )  # the records' values: the parts were checked to give them
    matrices, count = _replicate_example_variances(
        systems, weights, aligned, parts, ids, seed, resamples, corpus_resamples
    )
    return from_replicates(
        estimate, groups, matrices, examples, level, f"seeds (t) + examples ({count:,} bootstrap replicates)"
    )


def two_level(
    estimate: float,
    groups: dict[tuple, np.ndarray],
    example_total: float,
    by_group: dict,
    examples: int,
    level: float,
    how: str,
) -> Interval:
    """The t interval from the two levels: `groups`, per seed group its per-seed values; `example_total`, the
    estimate's variance over example draws (seeds fixed); `by_group`, per group (mean over its seeds of each seed's
    example variance, the example variance of its seed mean), from which the seed-by-example part is removed."""
    interactions, seed_terms = {}, []
    for g, d in groups.items():
        if len(d) > 1:
            mean_var, var_of_mean = by_group.get(g, (0.0, 0.0))
            interactions[g] = max(0.0, (mean_var - var_of_mean) / (len(d) - 1))
            seed_terms.append((float(np.var(d, ddof=1)) / len(d), len(d) - 1))
    if len(seed_terms) < len(groups):  # a one-seed group: its seed variance cannot be estimated
        how += "; one seed: seed variance not estimated"
    interaction = sum(interactions.values())
    variance = Variance(
        seed_terms, max(0.0, example_total - interaction), interaction, min(map(len, groups.values())), examples
    )
    return _t_interval(estimate, variance, level, how)


def from_replicates(
    estimate: float,
    per_seed: dict[tuple, np.ndarray],
    replicates: dict[tuple, np.ndarray],
    examples: int,
    level: float,
    how: str,
) -> Interval:
    """two_level from example-only replicates: per group its per-seed values and a (replicates, seeds) matrix of
    the same statistic on drawn examples (seeds fixed), weights already applied."""
    total = float(np.var(sum(x.mean(axis=1) for x in replicates.values()), ddof=1))
    by_group = {
        g: (float(np.var(x, axis=0, ddof=1).mean()), float(np.var(x.mean(axis=1), ddof=1)))
        for g, x in replicates.items()
    }
    return two_level(estimate, per_seed, total, by_group, examples, level, how)


@dataclass
class Variance:
    """The variance of a weighted sum of systems' scores, by part. `seed_terms`: per seed group (s²/n, n - 1 df),
    s² the sample variance of its per-seed values, which holds the seed-by-example part too (each seed's own
    example noise); `example`: the eval examples' shared part (the draw every seed sees) less that seed-by-example
    part (`interaction`, also kept to plan other seed and example counts); `seeds`, `examples`: n and m."""

    seed_terms: list
    example: float
    interaction: float
    seeds: int
    examples: int

    @property
    def seed(self) -> float:
        return sum(v for v, _ in self.seed_terms)

    @property
    def total(self) -> float:
        return self.seed + self.example

    @property
    def df(self) -> float:
        """Welch-Satterthwaite over the seed terms (n - 1 df each) and the example part (m - 1 df). In the df only,
        each seed term is taken at its upper 75% confidence value, s²/n · (n - 1) / χ²(0.25; n - 1): with 3-10 seeds
        an s² small by chance would otherwise raise the df just where the variance is underestimated (coverage of
        both in tests/test_coverage.py's simulation: docs/measured.md)."""
        from scipy import stats

        terms = [(v * df / stats.chi2.ppf(0.25, df), df) for v, df in self.seed_terms if df > 0]
        terms.append((self.example, max(1, self.examples - 1)))
        denominator = sum(v * v / df for v, df in terms if v > 0)
        return sum(v for v, _ in terms) ** 2 / denominator if denominator > 0 else math.inf

    def planned(self, seeds: int, examples: int | None = None) -> float:
        """The variance at another number of seeds and eval examples: the seeds' own part scaled as 1/n, the
        seed-by-example part as 1/(nm), the examples' shared part as 1/m."""
        n, m = max(self.seeds, 1), max(self.examples, 1)
        examples = examples or m
        own = max(0.0, self.seed - self.interaction)
        return own * n / seeds + self.interaction * n * m / (seeds * examples) + self.example * m / examples


def _seed_groups(systems, weights) -> dict[tuple, np.ndarray]:
    """Per seed tuple, the per-seed values of the weighted sum of the systems with those seeds: systems that share
    seeds are paired by seed (seed i of each trained on the same sample); groups are independent."""
    groups: dict[tuple, np.ndarray] = {}
    for system, w in zip(systems, weights):
        groups[system.seeds] = groups.get(system.seeds, 0.0) + w * np.asarray(system.values, dtype=float)
    return groups


def interval_of_means(
    arrays: list[tuple[tuple, str, np.ndarray]],
    weights: list[float],
    level: float = LEVEL,
    estimate: float | None = None,
) -> Interval:
    """`interval` for metrics that are means over examples, from arrays: per system (its seeds, its space, a
    (seeds, examples) matrix of per-example values, examples aligned by id within a space). The example parts are
    analytic: per space, the sample variance over examples of the weighted sum's per-example values, over m."""
    spaces: dict[str, dict[tuple, np.ndarray]] = {}  # per space, per seed group: the weighted sum's values
    groups: dict[tuple, np.ndarray] = {}  # per seed group: the weighted sum's per-seed values
    for (seeds, space, values), w in zip(arrays, weights):
        by_group = spaces.setdefault(space, {})
        by_group[seeds] = by_group.get(seeds, 0.0) + w * values
        groups[seeds] = groups.get(seeds, 0.0) + w * values.mean(axis=1)
    total, by_group = 0.0, {}
    for space, parts in spaces.items():
        m = next(iter(parts.values())).shape[1]
        if m < 2:
            continue
        total += float(np.var(sum(x.mean(axis=0) for x in parts.values()), ddof=1)) / m
        for g, x in parts.items():
            mean_var, var_mean = by_group.get(g, (0.0, 0.0))
            by_group[g] = (
                mean_var + float(np.var(x, axis=1, ddof=1).mean()) / m,
                var_mean + float(np.var(x.mean(axis=0), ddof=1)) / m,
            )
    estimate = float(sum(g.mean() for g in groups.values())) if estimate is None else estimate
    examples = min(next(iter(p.values())).shape[1] for p in spaces.values())
    return two_level(estimate, groups, total, by_group, examples, level, "seeds (t) + examples (analytic)")


def _replicate_example_variances(systems, weights, aligned, parts, ids, seed, resamples, corpus_resamples):
    """Corpus metrics: the same variances from bootstrap replicates of the eval examples (seeds fixed), each
    replicate drawing every space's examples once for all systems (paired): from per-example statistics where the
    metric decomposes, else re-scored on the drawn examples (`corpus_resamples` replicates)."""
    rng = np.random.default_rng(seed)
    count = resamples if all(p is not None for p in parts) else corpus_resamples
    chunks: dict[tuple, list[np.ndarray]] = {}  # per seed group: (replicates, seeds) blocks of the weighted sum
    for start in range(0, count, CHUNK):
        picked = {space: _weights(rng, len(i), min(CHUNK, count - start)) for space, i in ids.items()}
        block: dict[tuple, np.ndarray] = {}
        for system, w, by_seed, part in zip(systems, weights, aligned, parts):
            drawn = picked[system.space]
            if part is not None:
                scores = np.stack([_replicate_scores(p, drawn) for p in part], axis=1)
            else:
                n = drawn.shape[1]
                draws = [np.repeat(np.arange(n), np.rint(row * n).astype(int)) for row in drawn]
                scores = np.array([[system.scorer([rows[j] for j in d]) for rows in by_seed] for d in draws])
            block[system.seeds] = block.get(system.seeds, 0.0) + w * scores
        for g, x in block.items():
            chunks.setdefault(g, []).append(x)
    return {g: np.concatenate(xs) for g, xs in chunks.items()}, count


def _t_interval(estimate: float, variance: Variance, level: float, how: str) -> Interval:
    from scipy import stats

    se, df = math.sqrt(variance.total), variance.df
    q = stats.t.ppf(0.5 + level / 2, df) if math.isfinite(df) else stats.norm.ppf(0.5 + level / 2)
    return Interval(
        estimate,
        estimate - q * se,
        estimate + q * se,
        f"{how}, df {df:.1f}" if math.isfinite(df) else how,
        se=se,
        df=df,
        variance=variance,
    )


def _decomposed(system: System, by_seed: list[list[dict]]) -> list | None:
    """Per seed, the metric as a function of per-example sufficient statistics, checked to give the seed's value on
    all its examples: ("mean", values) for means over examples (accuracy; ROUGE as rouge-score averages it), or
    ("stats", matrix, score of the column sums) for BLEU (sacrebleu's own statistics, as its paired bootstrap uses).
    None: re-score the drawn examples in every replicate."""
    value = per_example(system.metric)  # a mean over examples (bench/api/metrics.py)
    if value is not None:
        return [("mean", np.array([value(r) for r in rows])) for rows in by_seed]
    parts = []
    for rows, value in zip(by_seed, system.values):
        if system.metric in AVERAGED:
            part = ("mean", _per_example(system, rows))
            whole = part[1].mean()
        elif system.metric == "bleu" and rows and "hyp" in rows[0]:
            stats, score = _bleu_statistics(rows, system.scorer_name)
            part, whole = ("stats", stats, score), score(stats.sum(axis=0))
        elif (
            system.metric in CORPUS_STATISTICS
            and rows
            and "hyp" in rows[0]
            and (system.metric not in NEEDS_JAVA or shutil.which("java"))
        ):
            score = _corpus_statistics(
                system.metric, system.scorer_name, tuple(r["hyp"] for r in rows), tuple(tuple(r["gold"]) for r in rows)
            )
            part, whole = ("corpus", score), score(np.ones((1, len(rows))))[0]
        else:
            return None
        if not math.isclose(whole, value, rel_tol=1e-9, abs_tol=1e-9):  # the metric changed: do not decompose it
            return None
        parts.append(part)
    return parts


def _per_example(system: System, rows: list[dict]) -> np.ndarray:
    """Each example's value of a metric averaged over examples. coco ROUGE-L (e2e-metrics) from one PTBTokenizer
    run over the eval set (pycocoevalcap's Rouge returns every example's score), not a JVM per example."""
    if system.metric == "rouge_l" and system.scorer_name == "e2e-metrics" and rows and "hyp" in rows[0]:
        from pycocoevalcap.rouge.rouge import Rouge

        gts, res = _coco_tokens(tuple(r["hyp"] for r in rows), tuple(tuple(r["gold"]) for r in rows))
        return 100.0 * np.asarray(Rouge().compute_score(gts, res)[1], dtype=float)
    return np.array([system.scorer([r]) for r in rows])


def _bleu_statistics(rows, scorer_name: str = "e2e-metrics"):
    """Per-example BLEU statistics (n-gram matches and totals, lengths) from sacrebleu, as bench.harness.scorers scores
    BLEU for `scorer_name`: e2e-metrics lowercased, 13a tokens, exp smoothing, every reference; webnlg-2017 and dart
    (multi-bleu.perl) on their normalised text, no smoothing, a fixed number of reference slots (a missing reference
    an empty one); and BLEU of their sums."""
    from sacrebleu.metrics import BLEU

    from bench.harness import scorers

    hypotheses, golds = [r["hyp"] for r in rows], [list(r["gold"]) for r in rows]
    if scorer_name in ("webnlg-2017", "dart"):
        webnlg = scorer_name == "webnlg-2017"
        slots = scorers.WEBNLG_REFERENCES if webnlg else scorers.DART_REFERENCES
        hypothesis, reference = (
            (scorers._webnlg_hypothesis, scorers._webnlg_reference)
            if webnlg
            else (scorers._dart_text, scorers._dart_text)
        )
        hypotheses = [hypothesis(h) for h in hypotheses]
        golds = [[reference(g) for g in gold[:slots]] + [""] * (slots - len(gold[:slots])) for gold in golds]
        bleu = BLEU(lowercase=webnlg, tokenize="none", smooth_method="none", force=True)
    else:
        bleu = BLEU(lowercase=True)
    streams = max(len(gold) for gold in golds)
    references = [[gold[k] if k < len(gold) else None for gold in golds] for k in range(streams)]
    stats = np.array(bleu._extract_corpus_statistics(hypotheses, references), dtype=float)
    return stats, lambda total: bleu._compute_score_from_stats([int(round(x)) for x in total]).score


def _ngrams(words, n):
    return (tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def _sparse(cells: dict, shape):
    """A scipy.sparse CSR matrix of `shape` holding `cells` ({(row, column): value})."""
    from scipy import sparse

    keys = list(cells)
    rows, cols = (np.array([k[0] for k in keys], dtype=int), np.array([k[1] for k in keys], dtype=int))
    return sparse.csr_matrix((np.array(list(cells.values()), dtype=float), (rows, cols)), shape=shape)


def _blocks(score, per_replicate: int):
    """`score` applied to blocks of replicates small enough that each block's arrays stay under CORPUS_BLOCK."""

    def blocked(counts: np.ndarray) -> np.ndarray:
        size = max(1, CORPUS_BLOCK // max(per_replicate, 1))
        return np.concatenate([score(counts[b : b + size]) for b in range(0, len(counts), size)])

    return blocked


def _nist_statistics(hypotheses, references, scorer_name):
    """NIST as bench.harness.scorers.mteval_nist computes it, as a function of example counts (replicates × examples:
    how often each example is drawn) -> each replicate's NIST. Re-scoring a drawn multiset recomputes the information
    weights from the references of the drawn examples, each counted as often as it is drawn (and the brevity
    penalty's reference length from them): so does this, from per-example n-gram counts of the references (only
    of the n-grams some hypothesis matches: that set holds the prefix of each of its n-grams), per-example clipped
    matches, hypothesis n-grams per order and lengths."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    from bench.harness.scorers import NIST_BETA, NIST_ORDER

    tokenize = Tokenizer13a()
    hyps = [tokenize(h.lower()).split() for h in hypotheses]
    refs = [[tokenize(g.lower()).split() for g in rs] for rs in references]
    column = {(): 0}  # column 0: the reference words, which divide a unigram's count in its information weight
    clipped, ref_counts = {}, []
    hyp_ngrams = np.zeros((len(hyps), NIST_ORDER + 1))
    for i, (words, rs) in enumerate(zip(hyps, refs)):
        counts = Counter()
        for n in range(1, NIST_ORDER + 1):
            hyp_counts = Counter(_ngrams(words, n))
            hyp_ngrams[i, n] = sum(hyp_counts.values())
            most = Counter()
            for r in rs:
                found = Counter(_ngrams(r, n))
                counts.update(found)
                most |= found
            for g, c in hyp_counts.items():
                if g in most:
                    clipped[i, column.setdefault(g, len(column))] = min(c, most[g])
        ref_counts.append(counts)
    shape = (len(hyps), len(column))
    references = _sparse(
        {(i, column[g]): c for i, counts in enumerate(ref_counts) for g, c in counts.items() if g in column}
        | {(i, 0): sum(map(len, rs)) for i, rs in enumerate(refs) if any(rs)},
        shape,
    )
    matches = _sparse(clipped, shape)
    prefix = np.array([column[g[:-1]] if len(g) > 1 else 0 for g in column])
    order = np.array([len(g) for g in column])
    hyp_words = np.array([len(w) for w in hyps], dtype=float)
    nonempty = np.array([sum(1 for r in rs if r) for rs in refs], dtype=float)

    def score(counts: np.ndarray) -> np.ndarray:
        ngram_counts = np.asarray((references.T @ counts.T).T)
        matched = np.asarray((matches.T @ counts.T).T)
        with np.errstate(divide="ignore", invalid="ignore"):
            info = np.where(matched > 0, np.log2(ngram_counts[:, prefix] / ngram_counts), 0.0)
        gained = np.stack([(matched * info)[:, order == n].sum(axis=1) for n in range(1, NIST_ORDER + 1)], axis=1)
        nist = (gained / np.maximum(counts @ hyp_ngrams[:, 1:], 1)).sum(axis=1)
        ref_words = ngram_counts[:, 0]
        per_segment = counts @ nonempty / np.maximum(counts.sum(axis=1), 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = counts @ hyp_words / (ref_words / per_segment)
            penalty = np.where(ratio < 1, np.exp(-NIST_BETA * np.log(ratio) ** 2), 1.0)
        return np.where((per_segment > 0) & (ref_words > 0) & (ratio > 0), nist * penalty, 0.0)

    return _blocks(score, 3 * len(column))


@functools.lru_cache(maxsize=256)
def _coco_tokens(hypotheses: tuple, references: tuple):
    """PTBTokenizer's text (bench.harness.scorers._coco_tokenize: one JVM run), kept: a system's seed is tokenised
    once."""
    from bench.harness.scorers import _coco_tokenize

    return _coco_tokenize(list(hypotheses), [list(r) for r in references])


def _cider_statistics(hypotheses, references, scorer_name):
    """CIDEr-D as pycocoevalcap's CiderScorer computes it on PTB-tokenised text (bench.harness.scorers), as a function
    of example counts (replicates × examples) -> each replicate's CIDEr. Re-scoring a drawn multiset takes document
    frequencies (the IDF) over the drawn examples' references, each example counted as often as drawn, and the log
    of the number drawn (all of them: n of n): so does this. A hypothesis n-gram's tf-idf weight is tf · idf with
    idf >= 0, so each of CiderScorer's sums is a sum over n-grams of a fixed per-example term times idf²: the
    clipped products (min(tf_hyp, tf_ref) · tf_ref), the squared norms of hypothesis and of each reference, per
    n-gram order; its length penalty (bigram counts) does not depend on the draw."""
    from pycocoevalcap.cider.cider_scorer import precook

    order, sigma = 4, 6.0  # pycocoevalcap Cider's defaults, which bench.harness.scorers uses
    gts, res = _coco_tokens(hypotheses, references)
    column: dict = {}
    col = lambda g: column.setdefault(g, len(column))  # noqa: E731
    in_refs, hyp_sq, clipped, ref_sq, penalty, owner = {}, {}, {}, {}, [], []
    for i in range(len(hypotheses)):
        hyp, cooked = precook(res[i][0], order), [precook(r, order) for r in gts[i]]
        for g in {g for ref in cooked for g in ref}:
            in_refs[i, col(g)] = 1.0
        for g, tf in hyp.items():
            hyp_sq[i * order + len(g) - 1, col(g)] = float(tf) ** 2
        hyp_length = sum(tf for g, tf in hyp.items() if len(g) == 2)
        for ref in cooked:
            pair = len(penalty)
            delta = float(hyp_length - sum(tf for g, tf in ref.items() if len(g) == 2))
            penalty.append(np.e ** (-(delta**2) / (2 * sigma**2)))
            owner.append(i)
            for g, tf in ref.items():
                ref_sq[pair * order + len(g) - 1, col(g)] = float(tf) ** 2
                if g in hyp:
                    clipped[pair * order + len(g) - 1, col(g)] = float(min(hyp[g], tf) * tf)
    examples, pairs = len(hypotheses), len(penalty)
    in_refs = _sparse(in_refs, (examples, len(column)))
    hyp_sq, ref_sq = _sparse(hyp_sq, (examples * order, len(column))), _sparse(ref_sq, (pairs * order, len(column)))
    clipped = _sparse(clipped, (pairs * order, len(column)))
    penalty, owner = np.array(penalty), np.array(owner)
    references_per_example = np.bincount(owner, minlength=examples)
    owned = _sparse({(i, pair): 1.0 for pair, i in enumerate(owner)}, (examples, pairs))  # example × its pairs

    def score(counts: np.ndarray) -> np.ndarray:
        drawn = counts.sum(axis=1)
        df = np.asarray((in_refs.T @ counts.T).T)
        idf_sq = ((np.log(drawn)[:, None] - np.log(np.maximum(1.0, df))) ** 2).T  # n-grams × replicates
        norm_hyp = np.sqrt(hyp_sq @ idf_sq).reshape(examples, order, -1)[owner]
        norm_ref = np.sqrt(ref_sq @ idf_sq).reshape(pairs, order, -1)
        value = (clipped @ idf_sq).reshape(pairs, order, -1)
        both = (norm_hyp != 0) & (norm_ref != 0)
        value = np.divide(value, norm_hyp * norm_ref, out=value, where=both) * penalty[:, None, None]
        per_example = (owned @ value.reshape(pairs, -1)).reshape(examples, order, -1)
        cider = per_example.mean(axis=1) / references_per_example[:, None] * 10.0  # examples × replicates
        return (counts * cider.T).sum(axis=1) / drawn

    return _blocks(score, 2 * len(column) + 3 * (examples + pairs) * order)


def _meteor_statistics(hypotheses, references, scorer_name):
    """METEOR 1.5 as bench.harness.scorers computes it (pycocoevalcap's jar and arguments, on the text `scorer_name`
    gives it), as a function of example counts (replicates × examples) -> each replicate's METEOR. Each segment's
    statistics come once from the jar ("SCORE ||| refs ||| hyp"); a replicate is one "EVAL ||| stats" line with
    the drawn segments' statistics summed as the jar sums the segments of an EVAL line (MeteorStats.addStats, which
    skips the chunk of a segment matched whole in one chunk): the same value as listing the drawn segments one by
    one, to the last digit, and 40 times faster. Nothing depends on the drawn set but these sums (METEOR has no
    IDF). All in the report's one METEOR process."""
    from bench.harness import scorers

    if scorer_name == "webnlg-2017":
        hyps = [scorers._webnlg_hypothesis(h) for h in hypotheses]
        refs = [[scorers._webnlg_reference(r) for r in rs[: scorers.WEBNLG_REFERENCES]] for rs in references]
    elif scorer_name == "dart":
        hyps = [scorers._dart_text(h) for h in hypotheses]
        refs = [[scorers._dart_text(r) for r in rs[: scorers.DART_REFERENCES]] for rs in references]
    else:
        gts, res = _coco_tokens(hypotheses, references)
        hyps, refs = [res[i][0] for i in range(len(hypotheses))], [gts[i] for i in range(len(hypotheses))]
    lines = [
        " ||| ".join(("SCORE", " ||| ".join(rs), h.replace("|||", "").replace("  ", " ")))  # as Meteor._stat
        for h, rs in zip(hyps, refs)
    ]
    stats = np.array([[float(x) for x in line.split()] for line in _meteor_answers(lines, 1)])
    # fields: test/reference length and function words, then per stage test/reference matches of content and of
    # function words, then chunks and test/reference word matches; the jar adds no chunk for a segment whose
    # words all match (total matches = length on both sides) in one chunk
    stages = stats[:, 4:-3]
    whole = (
        ((stages[:, 0::4] + stages[:, 2::4]).sum(axis=1) == stats[:, 0])
        & ((stages[:, 1::4] + stages[:, 3::4]).sum(axis=1) == stats[:, 1])
        & (stats[:, -3] == 1)
    )
    stats[whole, -3] = 0

    def score(counts: np.ndarray) -> np.ndarray:
        evals = ["EVAL ||| " + " ".join(repr(float(x)) for x in total) for total in counts @ stats]
        return 100.0 * np.array([float(answer) for answer in _meteor_answers(evals, 2)])

    return score


_meteor_process: list = []  # the report's METEOR process (pycocoevalcap's wrapper), started when first needed


def _meteor_answers(lines: list[str], answers: int) -> list[str]:
    """The last of the `answers` lines the METEOR process writes for each of `lines`. A thread writes while this
    reads: all lines at once would fill both pipes and block both processes."""
    if not _meteor_process:
        from pycocoevalcap.meteor.meteor import Meteor

        from bench.harness.scorers import _java_missing

        if not shutil.which("java"):
            raise _java_missing("METEOR")
        _meteor_process.append(Meteor())
        atexit.register(_end_meteor)
    process = _meteor_process[0].meteor_p

    def write():
        try:
            for line in lines:
                process.stdin.write((line + "\n").encode())
            process.stdin.flush()
        except OSError:  # the process ended: the reading side reports it
            pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    found = []
    try:
        for _ in lines:
            for _ in range(answers):
                answer = process.stdout.readline()
            if not answer:
                raise RuntimeError("METEOR's java process ended: " + process.stderr.read().decode()[-400:])
            found.append(answer.decode().strip())
    except BaseException:
        _end_meteor()
        raise
    writer.join()
    return found


def _end_meteor() -> None:
    while _meteor_process:
        process = _meteor_process.pop().meteor_p
        try:
            process.stdin.close()
        except OSError:
            pass
        process.kill()
        process.wait()


CORPUS_STATISTICS = {"nist": _nist_statistics, "cider": _cider_statistics, "meteor": _meteor_statistics}


@functools.lru_cache(maxsize=256)
def _corpus_statistics(metric, scorer_name, hypotheses: tuple, references: tuple):
    """CORPUS_STATISTICS[metric], kept: the systems of paired differences are built again for every comparison."""
    return CORPUS_STATISTICS[metric](hypotheses, references, scorer_name)


# Every interval starts its generator from BOOTSTRAP_SEED, so a system's summary interval and the comparisons it
# enters (same eval set, same seeds) draw the same examples: a seed's corpus metric (BLEU, NIST, METEOR, CIDEr:
# the report's slow part) is scored on a draw once, not once per comparison. Same inputs, same scores.
_SCORED: dict[tuple, np.ndarray] = {}


def _replicate_scores(part: tuple, picked: np.ndarray) -> np.ndarray:
    """One seed's score in each replicate, from its per-example statistics and the drawn example weights."""
    if part[0] == "mean":  # einsum, not @: BLAS's thread pool costs 30x more than these small products
        return np.einsum("cn,n->c", picked, part[1])
    statistics = part[1] if part[0] == "corpus" else (part[1].shape, part[1].tobytes())
    key = (statistics, picked.shape, hashlib.blake2b(picked.tobytes(), digest_size=16).digest())
    if key not in _SCORED:
        if part[0] == "corpus":
            _SCORED[key] = part[1](np.rint(picked * picked.shape[1]))
        else:
            totals = np.einsum("cn,nk->ck", picked * picked.shape[1], part[1])
            _SCORED[key] = np.array([part[2](total) for total in totals])
    return _SCORED[key]


def _interval(estimate, draws, level, method) -> Interval:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high), method, draws)
