"""Bootstrap intervals for the report: one system's score, or a weighted sum of systems' scores (a paired difference,
a difference of differences), resampled over seeds and over eval examples.

Design. A *system* is one summary row: a method variant's cells (one per seed) on one eval set and metric. One
bootstrap replicate draws the eval examples once (n of n, with replacement) per eval set -- the same draw for
every system on that eval set, which pairs the systems by example id -- and each system's seeds (s of s); the
system's score in the replicate is the mean over the drawn seeds of its metric on the drawn examples. Eval
examples and seeds are crossed (every seed is scored on the same examples), so both are drawn once per replicate;
systems with the same seeds draw them jointly (seed i of both trained on the same sample). Intervals are percentile
intervals of 10,000 replicates where the metric follows from per-example statistics, checked to give the record's
value: means over examples (accuracy, an ensemble's average prompt, ROUGE as rouge-score and coco-caption average
it) and the corpus metrics of the drawn examples, as re-scoring them would give: BLEU (sacrebleu's per-sentence
n-gram statistics, summed: as sacrebleu's own paired bootstrap computes it), NIST and CIDEr (per-example n-gram
counts; the information weights and IDF from the drawn examples' references) and METEOR (each segment's statistics
from the jar, summed per replicate and scored by the jar); of 200 replicates for other corpus metrics (F1, an
ensemble's best prompt, or a metric whose statistics no longer give the record's value), each re-scored by the
method's own `score_outputs` on the drawn examples -- except NIST, METEOR and CIDEr, too slow to re-score (a JVM
per score for METEOR and CIDEr), which then get intervals over seeds only (so do METEOR and CIDEr without Java), as
do all records without per-example outputs (older records); with one seed and no outputs there is no interval.

scipy.stats.bootstrap (paired, BCa) resamples one level: it cannot draw examples and seeds together, which is why
this is our own (a few array operations). The generator is seeded: the same records give the same intervals.
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

RESAMPLES = 10_000
CORPUS_RESAMPLES = 200
SEEDS_ONLY = {"meteor", "cider", "nist"}  # too slow to re-score per replicate: over seeds unless decomposed
NEEDS_JAVA = {"meteor", "cider"}  # the METEOR jar; CIDEr's PTBTokenizer. Without Java: over seeds only
CORPUS_BLOCK = 4_000_000  # array elements per block of replicates in the NIST/CIDEr statistics: bounds memory
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
    scorer_name: str = "e2e-metrics"  # the eval set's official scorer (bench/scorers.py), for generation metrics


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
    parts = None
    if with_outputs:
        aligned = []  # per system, per seed: the output rows of the space's shared examples, in one order
        for system in systems:
            order = {i: k for k, i in enumerate(ids[system.space])}
            aligned.append([sorted((r for r in rows if r["id"] in order), key=lambda r: order[r["id"]])
                            for rows in system.outputs])
        parts = [_decomposed(s, by_seed) for s, by_seed in zip(systems, aligned)]
    if not with_outputs or any(p is None and s.metric in SEEDS_ONLY for s, p in zip(systems, parts)):
        if any(len(s.seeds) < 2 for s in systems):
            return None
        draws = np.zeros(resamples)
        for system, w, seeds in zip(systems, weights, _seed_weights(rng, systems, resamples)):
            draws += w * seeds @ system.values
        return _interval(estimate, draws, level, "seeds")
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
            part = ("mean", _per_example(system, rows))
            whole = part[1].mean()
        elif system.metric == "bleu" and rows and "hyp" in rows[0]:
            stats, score = _bleu_statistics(rows, system.scorer_name)
            part, whole = ("stats", stats, score), score(stats.sum(axis=0))
        elif system.metric in CORPUS_STATISTICS and rows and "hyp" in rows[0] and \
                (system.metric not in NEEDS_JAVA or shutil.which("java")):
            score = _corpus_statistics(system.metric, system.scorer_name, tuple(r["hyp"] for r in rows),
                                       tuple(tuple(r["gold"]) for r in rows))
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
    """Per-example BLEU statistics (n-gram matches and totals, lengths) from sacrebleu, as bench.scorers scores BLEU
    for `scorer_name`: e2e-metrics lowercased, 13a tokens, exp smoothing, every reference; webnlg-2017 and dart
    (multi-bleu.perl) on their normalised text, no smoothing, a fixed number of reference slots (a missing reference
    an empty one); and BLEU of their sums."""
    from sacrebleu.metrics import BLEU

    from bench import scorers

    hypotheses, golds = [r["hyp"] for r in rows], [list(r["gold"]) for r in rows]
    if scorer_name in ("webnlg-2017", "dart"):
        webnlg = scorer_name == "webnlg-2017"
        slots = scorers.WEBNLG_REFERENCES if webnlg else scorers.DART_REFERENCES
        hypothesis, reference = ((scorers._webnlg_hypothesis, scorers._webnlg_reference) if webnlg
                                 else (scorers._dart_text, scorers._dart_text))
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
    return (tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def _sparse(cells: dict, shape) -> "sparse.csr_matrix":
    from scipy import sparse

    keys = list(cells)
    rows, cols = (np.array([k[0] for k in keys], dtype=int), np.array([k[1] for k in keys], dtype=int))
    return sparse.csr_matrix((np.array(list(cells.values()), dtype=float), (rows, cols)), shape=shape)


def _blocks(score, per_replicate: int):
    """`score` applied to blocks of replicates small enough that each block's arrays stay under CORPUS_BLOCK."""
    def blocked(counts: np.ndarray) -> np.ndarray:
        size = max(1, CORPUS_BLOCK // max(per_replicate, 1))
        return np.concatenate([score(counts[b:b + size]) for b in range(0, len(counts), size)])
    return blocked


def _nist_statistics(hypotheses, references, scorer_name):
    """NIST as bench.scorers.mteval_nist computes it, as a function of example counts (replicates × examples: how
    often each example is drawn) -> each replicate's NIST. Re-scoring a drawn multiset recomputes the information
    weights from the references of the drawn examples, each counted as often as it is drawn (and the brevity
    penalty's reference length from them): so does this, from per-example n-gram counts of the references (only
    of the n-grams some hypothesis matches: that set holds the prefix of each of its n-grams), per-example clipped
    matches, hypothesis n-grams per order and lengths."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    from bench.scorers import NIST_BETA, NIST_ORDER

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
    references = _sparse({(i, column[g]): c for i, counts in enumerate(ref_counts) for g, c in counts.items()
                          if g in column} | {(i, 0): sum(map(len, rs)) for i, rs in enumerate(refs) if any(rs)},
                         shape)
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
    """PTBTokenizer's text (bench.scorers._coco_tokenize: one JVM run), kept: a system's seed is tokenised once."""
    from bench.scorers import _coco_tokenize

    return _coco_tokenize(list(hypotheses), [list(r) for r in references])


def _cider_statistics(hypotheses, references, scorer_name):
    """CIDEr-D as pycocoevalcap's CiderScorer computes it on PTB-tokenised text (bench.scorers), as a function of
    example counts (replicates × examples) -> each replicate's CIDEr. Re-scoring a drawn multiset takes document
    frequencies (the IDF) over the drawn examples' references, each example counted as often as drawn, and the log
    of the number drawn (all of them: n of n): so does this. A hypothesis n-gram's tf-idf weight is tf · idf with
    idf >= 0, so each of CiderScorer's sums is a sum over n-grams of a fixed per-example term times idf²: the
    clipped products (min(tf_hyp, tf_ref) · tf_ref), the squared norms of hypothesis and of each reference, per
    n-gram order; its length penalty (bigram counts) does not depend on the draw."""
    from pycocoevalcap.cider.cider_scorer import precook

    order, sigma = 4, 6.0  # pycocoevalcap Cider's defaults, which bench.scorers uses
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
            penalty.append(np.e ** (-(delta ** 2) / (2 * sigma ** 2)))
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
    """METEOR 1.5 as bench.scorers computes it (pycocoevalcap's jar and arguments, on the text `scorer_name` gives
    it), as a function of example counts (replicates × examples) -> each replicate's METEOR. Each segment's
    statistics come once from the jar ("SCORE ||| refs ||| hyp"); a replicate is one "EVAL ||| stats" line with
    the drawn segments' statistics summed as the jar sums the segments of an EVAL line (MeteorStats.addStats, which
    skips the chunk of a segment matched whole in one chunk): the same value as listing the drawn segments one by
    one, to the last digit, and 40 times faster. Nothing depends on the drawn set but these sums (METEOR has no
    IDF). All in the report's one METEOR process."""
    from bench import scorers

    if scorer_name == "webnlg-2017":
        hyps = [scorers._webnlg_hypothesis(h) for h in hypotheses]
        refs = [[scorers._webnlg_reference(r) for r in rs[:scorers.WEBNLG_REFERENCES]] for rs in references]
    elif scorer_name == "dart":
        hyps = [scorers._dart_text(h) for h in hypotheses]
        refs = [[scorers._dart_text(r) for r in rs[:scorers.DART_REFERENCES]] for rs in references]
    else:
        gts, res = _coco_tokens(hypotheses, references)
        hyps, refs = [res[i][0] for i in range(len(hypotheses))], [gts[i] for i in range(len(hypotheses))]
    lines = [" ||| ".join(("SCORE", " ||| ".join(rs), h.replace("|||", "").replace("  ", " ")))  # as Meteor._stat
             for h, rs in zip(hyps, refs)]
    stats = np.array([[float(x) for x in line.split()] for line in _meteor_answers(lines, 1)])
    # fields: test/reference length and function words, then per stage test/reference matches of content and of
    # function words, then chunks and test/reference word matches; the jar adds no chunk for a segment whose
    # words all match (total matches = length on both sides) in one chunk
    stages = stats[:, 4:-3]
    whole = ((stages[:, 0::4] + stages[:, 2::4]).sum(axis=1) == stats[:, 0]) & \
        ((stages[:, 1::4] + stages[:, 3::4]).sum(axis=1) == stats[:, 1]) & (stats[:, -3] == 1)
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

        from bench.scorers import _java_missing

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


def _decomposed_draws(rng, systems, weights, ids, parts, count) -> np.ndarray:
    """`count` replicates of the weighted sum from per-example statistics: example multiplicities (count, examples)
    times each seed's statistics, then seed multiplicities."""
    examples = {space: _weights(rng, len(i), count) for space, i in ids.items()}
    draws = np.zeros(count)
    for system, w, by_seed, seeds in zip(systems, weights, parts, _seed_weights(rng, systems, count)):
        picked = examples[system.space]
        per_seed = np.zeros((count, len(by_seed)))
        for k, part in enumerate(by_seed):
            per_seed[:, k] = _replicate_scores(part, picked)
        draws += w * (per_seed * seeds).sum(axis=1)
    return draws


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
