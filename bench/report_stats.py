"""Bootstrap intervals for the report: one system's score, or a weighted sum of systems' scores (a paired difference,
a difference of differences), resampled over seeds and over eval examples.

Design. A *system* is one summary row: a method variant's cells (one per seed) on one eval set and metric. One
bootstrap replicate draws the eval examples once (n of n, with replacement) per eval set -- the same draw for
every system on that eval set, which pairs the systems by example id -- and each system's seeds (s of s); the
system's score in the replicate is the mean over the drawn seeds of its metric on the drawn examples. Eval
examples and seeds are crossed (every seed is scored on the same examples), so both are drawn once per replicate;
systems with the same seeds draw them jointly (seed i of both trained on the same sample). Intervals are percentile
intervals of 10,000 replicates where the metric follows from per-example statistics, checked to give the record's
value: means over examples (accuracy, an ensemble's average prompt, ROUGE as rouge-score averages it) and BLEU
(sacrebleu's per-sentence n-gram statistics, summed over the drawn examples: corpus BLEU, as sacrebleu's own paired
bootstrap computes it); of 200 replicates for other corpus metrics (F1, an ensemble's best prompt, or a metric whose
statistics no longer give the record's value), each re-scored by the method's own `score_outputs` on the drawn
examples. METEOR and CIDEr (a JVM per score) and NIST (mteval's definition in pure Python, bench/scorers.py)
get intervals over seeds only, as do all records without per-example outputs (older records); with one seed and no
outputs there is no interval.

scipy.stats.bootstrap (paired, BCa) resamples one level: it cannot draw examples and seeds together, which is why
this is our own (a few array operations). The generator is seeded: the same records give the same intervals.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

RESAMPLES = 10_000
CORPUS_RESAMPLES = 200
SEEDS_ONLY = {"meteor", "cider", "nist"}  # a JVM per score (METEOR, CIDEr); NIST in pure Python
AVERAGED = {"rouge_1", "rouge_2", "rouge_l"}  # rouge-score F-measures averaged over examples (checked per record)
LEVEL = 0.95
BOOTSTRAP_SEED = 0
CHUNK = 2_000  # replicates per matrix product: bounds memory on large eval sets
MEAN_METRICS = {  # metrics that are means over examples: each example's value
    "accuracy": lambda row: 100.0 * (row["pred"] == row["gold"]),
    "accuracy_avg_single": lambda row: 100.0 * sum(p == row["gold"] for p in row["preds"]) / len(row["preds"]),
}


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


@dataclass
class Interval:
    estimate: float
    low: float
    high: float
    method: str  # how it was computed, for the report
    draws: np.ndarray  # the bootstrap distribution


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


def _seed_weights(rng, systems, count) -> list[np.ndarray]:
    """(count, seeds) multiplicities / seeds per system; systems with the same seeds share one draw."""
    drawn: dict[tuple, np.ndarray] = {}
    out = []
    for system in systems:
        if system.seeds not in drawn:
            drawn[system.seeds] = _weights(rng, len(system.seeds), count)
        out.append(drawn[system.seeds])
    return out


def bootstrap(systems: list[System], weights: list[float], level: float = LEVEL, seed: int = BOOTSTRAP_SEED,
              resamples: int = RESAMPLES, corpus_resamples: int = CORPUS_RESAMPLES) -> Interval | None:
    """The interval of sum_i weights[i] * score(systems[i]); None when it cannot be computed (one seed and no
    per-example outputs, or no shared examples)."""
    rng = np.random.default_rng(seed)
    estimate = float(sum(w * s.values.mean() for s, w in zip(systems, weights)))
    with_outputs = all(s.outputs is not None for s in systems)
    ids = _aligned(systems) if with_outputs else None
    if with_outputs and ids is None:
        return None
    if not with_outputs or any(s.metric in SEEDS_ONLY for s in systems):
        if any(len(s.seeds) < 2 for s in systems):
            return None
        draws = np.zeros(resamples)
        for system, w, seeds in zip(systems, weights, _seed_weights(rng, systems, resamples)):
            draws += w * seeds @ system.values
        return _interval(estimate, draws, level, "seeds")
    aligned = []  # per system, per seed: the output rows of the space's shared examples, in one order
    for system in systems:
        order = {i: k for k, i in enumerate(ids[system.space])}
        aligned.append([sorted((r for r in rows if r["id"] in order), key=lambda r: order[r["id"]])
                        for rows in system.outputs])
    parts = [_decomposed(s, by_seed) for s, by_seed in zip(systems, aligned)]
    if all(part is not None for part in parts):
        draws = np.concatenate([_decomposed_draws(rng, systems, weights, ids, parts, count)
                                for count in [CHUNK] * (resamples // CHUNK) + [resamples % CHUNK] if count])
        return _interval(estimate, draws, level, f"seeds × examples, {resamples:,} resamples")
    draws = np.zeros(corpus_resamples)
    for b in range(corpus_resamples):
        picks = {space: rng.integers(len(space_ids), size=len(space_ids)) for space, space_ids in ids.items()}
        for system, w, by_seed, seeds in zip(systems, weights, aligned, _seed_weights(rng, systems, 1)):
            draws[b] += w * sum(m * system.scorer([rows[j] for j in picks[system.space]])
                                for rows, m in zip(by_seed, seeds[0]) if m)
    return _interval(estimate, draws, level, f"seeds × examples, {corpus_resamples} resamples (corpus metric)")


def _decomposed(system: System, by_seed: list[list[dict]]) -> list | None:
    """Per seed, the metric as a function of per-example sufficient statistics, checked to give the seed's value on
    all its examples: ("mean", values) for means over examples (accuracy; ROUGE as rouge-score averages it), or
    ("stats", matrix, score of the column sums) for BLEU (sacrebleu's own statistics, as its paired bootstrap uses).
    None: re-score the drawn examples in every replicate."""
    if system.metric in MEAN_METRICS:
        return [("mean", np.array([MEAN_METRICS[system.metric](r) for r in rows])) for rows in by_seed]
    parts = []
    for rows, value in zip(by_seed, system.values):
        if system.metric in AVERAGED:
            part = ("mean", np.array([system.scorer([r]) for r in rows]))
            whole = part[1].mean()
        elif system.metric == "bleu" and rows and "hyp" in rows[0]:
            stats, score = _bleu_statistics(rows)
            part, whole = ("stats", stats, score), score(stats.sum(axis=0))
        else:
            return None
        if not math.isclose(whole, value, rel_tol=1e-9, abs_tol=1e-9):  # the metric changed: do not decompose it
            return None
        parts.append(part)
    return parts


def _bleu_statistics(rows):
    """Per-example BLEU statistics (n-gram matches and totals, lengths) from sacrebleu, lowercased and with every
    reference, as bench.evaluation.generation_metrics scores BLEU; and BLEU of their sums."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU(lowercase=True)
    streams = max(len(r["gold"]) for r in rows)
    references = [[r["gold"][k] if k < len(r["gold"]) else None for r in rows] for k in range(streams)]
    stats = np.array(bleu._extract_corpus_statistics([r["hyp"] for r in rows], references), dtype=float)
    return stats, lambda total: bleu._compute_score_from_stats([int(round(x)) for x in total]).score


def _decomposed_draws(rng, systems, weights, ids, parts, count) -> np.ndarray:
    """`count` replicates of the weighted sum from per-example statistics: example multiplicities (count, examples)
    times each seed's statistics, then seed multiplicities."""
    examples = {space: _weights(rng, len(i), count) for space, i in ids.items()}
    draws = np.zeros(count)
    for system, w, by_seed, seeds in zip(systems, weights, parts, _seed_weights(rng, systems, count)):
        picked = examples[system.space]
        per_seed = np.zeros((count, len(by_seed)))
        for k, part in enumerate(by_seed):
            # einsum, not @: BLAS's thread pool costs 30x more than these small products on a shared machine
            if part[0] == "mean":
                per_seed[:, k] = np.einsum("cn,n->c", picked, part[1])
            else:
                totals = np.einsum("cn,nk->ck", picked * picked.shape[1], part[1])
                per_seed[:, k] = [part[2](total) for total in totals]
        draws += w * (per_seed * seeds).sum(axis=1)
    return draws


def _interval(estimate, draws, level, method) -> Interval:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high), method, draws)


def needed(interval: Interval, margin: float, seeds: int, examples: int | None) -> str:
    """How many seeds (or examples) would put the interval beyond the margin, if it narrows as 1/sqrt(n) around
    the observed estimate."""
    distance = abs(interval.estimate - margin)
    half = (interval.high - interval.low) / 2
    if distance == 0 or not math.isfinite(half):
        return "the observed difference equals the margin: no number of seeds or examples would decide it"
    factor = max(1.0, (half / distance) ** 2)
    about = f"about {math.ceil(seeds * factor)} seeds"
    return about + (f" or {math.ceil(examples * factor)} examples per seed" if examples else "") + " would decide it"
