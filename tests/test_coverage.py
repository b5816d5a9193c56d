"""The report's intervals cover at their nominal rate at the seeds a grid has, and identical systems are declared
"reproduced" at most at the stated alpha (bench/report/stats.py, bench/report/verdicts.py; docs/statistics.md).

Data are simulated as the study's classification comparisons are made: per seed and eval example a right/wrong
answer of each of two systems, with three sources of variation -- seeds (a per-seed shift of every answer's
probability of each system), examples (a per-example difference between the systems that every seed sees), and
their interaction (each seed's own right/wrong draws) -- in three mixes: seed-dominated, example-dominated and
mixed. The true difference is known exactly (no probability is clipped). The simulation runs the report's own
arithmetic (bench.report.stats.interval_of_means, which bench.report.stats.interval calls for accuracy; their
equality is checked below on the records' path)."""

import numpy as np
import pytest

from bench.report.stats import System, interval, interval_of_means
from bench.report.verdicts import ALPHA, judge, pooled

EXAMPLES = 200  # the study's classification eval sets: 200 examples (CB: 56)
REPLICATES = 2000  # Monte Carlo standard error of a 95% coverage: 0.5 points
# Each mix: (answer probabilities: "graded" 0.35-0.65 per example, or "settled" 0.1 / 0.9 as trained classifiers
# mostly answer; seed shift half-width; example gain half-width (graded) or share of examples A flips (settled))
MIXES = {
    "seed-dominated": ("graded", 0.12, 0.0),
    "example-dominated": ("settled", 0.0, 0.25),
    "mixed": ("graded", 0.06, 0.14),
    "settled, seeds and examples": ("settled", 0.04, 0.25),
}


def truth(mix: str, delta: float) -> float:
    """The expected difference A − B in points: `delta` on graded answers; on settled ones, A answers the flipped
    share of examples the other way: 0.25 · (0.6 · (0.1 − 0.9) + 0.4 · (0.9 − 0.1)) = −0.04."""
    kind, _, share = MIXES[mix]
    return 100 * (delta if kind == "graded" else share * (0.6 * -0.8 + 0.4 * 0.8))


def simulate(rng, seeds: int, mix: str, delta: float = 0.03, examples: int = EXAMPLES) -> list[np.ndarray]:
    """Two systems' per-seed per-example right (100) / wrong (0); no probability ever leaves [0, 1]."""
    kind, seed_width, example_width = MIXES[mix]
    if kind == "graded":
        base = rng.uniform(0.35, 0.65, examples)  # example difficulty, shared
        a = base + delta + rng.uniform(-example_width, example_width, examples)  # A's per-example advantage
    else:
        base = np.where(rng.random(examples) < 0.6, 0.9, 0.1)
        a = np.where(rng.random(examples) < example_width, 1 - base, base)
    out = []
    for p in (a, base):
        shift = rng.uniform(-seed_width, seed_width, seeds)[:, None]  # each seed's shift, mean 0
        out.append(100.0 * (rng.random((seeds, examples)) < p[None, :] + shift))
    return out


def test_the_simulated_probabilities_are_never_clipped():
    for kind, seed_width, example_width in MIXES.values():
        low, high = (0.35 - example_width, 0.65 + 0.03 + example_width) if kind == "graded" else (0.1, 0.9)
        assert low - seed_width > 0 and high + seed_width < 1


@pytest.mark.parametrize("seeds", [3, 5, 10])
@pytest.mark.parametrize("mix", sorted(MIXES))
def test_nominal_95_percent_intervals_cover_93_to_97_percent(mix, seeds):
    rng = np.random.default_rng([seeds, sorted(MIXES).index(mix)])
    covered = 0
    for _ in range(REPLICATES):
        a, b = simulate(rng, seeds, mix)
        iv = interval_of_means([(tuple(range(seeds)), "t/t", a), (tuple(range(seeds)), "t/t", b)], [1, -1])
        covered += iv.low <= truth(mix, 0.03) <= iv.high
    assert 0.93 <= covered / REPLICATES <= 0.97, f"{mix}, {seeds} seeds: {covered / REPLICATES:.3f}"


@pytest.mark.parametrize("seeds", [3, 5, 10])
def test_identical_systems_are_reproduced_at_most_at_alpha(seeds):
    """Superiority at margin 0 between systems that do not differ: a reproduction is a false positive. And a
    non-inferiority claim at the boundary (the truth exactly at −margin) likewise."""
    rng = np.random.default_rng(seeds)
    false = {"superiority": 0, "non_inferiority": 0}
    for _ in range(REPLICATES):
        a, b = simulate(rng, seeds, "mixed", delta=0.0)
        iv = interval_of_means([(tuple(range(seeds)), "t/t", a), (tuple(range(seeds)), "t/t", b)], [1, -1])
        false["superiority"] += judge(iv, "superiority", 0.0, 1, ALPHA, 1)[0] == "reproduced"
        a, b = simulate(rng, seeds, "mixed", delta=-0.02)  # truth: A two points below B
        iv = interval_of_means([(tuple(range(seeds)), "t/t", a), (tuple(range(seeds)), "t/t", b)], [1, -1])
        false["non_inferiority"] += judge(iv, "non_inferiority", 2.0, 1, ALPHA, 1)[0] == "reproduced"
    # the one-sided level is 2.5%; allow its Monte Carlo error (2000 draws: about 0.35 points)
    assert false["superiority"] / REPLICATES <= ALPHA + 0.01, false
    assert false["non_inferiority"] / REPLICATES <= ALPHA + 0.01, false


def test_pooled_settings_cover_their_mean_and_do_not_narrow_with_more_settings():
    """Random effects over settings (e.g. train sizes): the settings' true differences vary around their mean;
    the interval covers that mean at >= 93%, and holding more settings of the same spread does not make it
    cover less."""
    rng = np.random.default_rng(7)
    for n_settings in (3, 6):
        covered = 0
        for _ in range(600):
            effects = 0.03 + rng.uniform(-0.03, 0.03, n_settings)
            parts = []
            for effect in effects:
                a, b = simulate(rng, 3, "mixed", delta=effect)
                parts.append(interval_of_means([((0, 1, 2), "t/t", a), ((0, 1, 2), "t/t", b)], [1, -1]))
            iv = pooled(parts)
            covered += iv.low <= 3.0 <= iv.high
        assert covered / 600 >= 0.93, (n_settings, covered / 600)


def test_the_records_path_gives_the_arrays_interval():
    """bench.report.stats.interval (Systems of per-example output rows, aligned by id) equals interval_of_means
    on the same answers."""
    rng = np.random.default_rng(3)
    a, b = simulate(rng, 3, "mixed", examples=60)

    def system(answers):
        outputs = [[{"id": f"e{i}", "pred": int(v > 0), "gold": 1} for i, v in enumerate(row)] for row in answers]
        return System("t/t", "accuracy", (0, 1, 2), answers.mean(axis=1), outputs, None)

    via_records = interval([system(a), system(b)], [1, -1])
    via_arrays = interval_of_means([((0, 1, 2), "t/t", a), ((0, 1, 2), "t/t", b)], [1, -1])
    assert (via_records.low, via_records.high) == pytest.approx((via_arrays.low, via_arrays.high), abs=1e-9)
    assert via_records.df == pytest.approx(via_arrays.df)
