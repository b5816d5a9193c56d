"""A claim's comparisons -> its verdict, as a stated test (docs/statistics.md).

Each claim in config/claims.yaml declares `hypothesis` and a `margin` m >= 0 in the metric's units; each of its
comparisons is a difference D (left - right, or a difference of differences) that the claim puts on one `side`
(+1: D above, -1: D below; x = side · D):
- superiority:     x > m                          reproduced when the one-sided (1 - alpha) lower bound of x > m
- non_inferiority: x > -m                         reproduced when that bound > -m
- equivalence:     |D| < m (two one-sided tests)  reproduced when both one-sided (1 - alpha) bounds lie within ±m
alpha is one-sided per comparison (default 0.025, so the printed 95% interval decides a reproduction). A claim is
reproduced when every comparison is: an intersection-union test, which needs no multiplicity correction. It is
contradicted when any comparison lies significantly on the other side of the margin (x < -m; for equivalence, D
outside ±m): a union of k tests, so each at alpha / k (Bonferroni). A superiority comparison significantly below
its margin but not reversed "did not clear the margin": inconclusive, said so. A comparison whose systems did not
learn (bench.report.verdicts.Gate) is not decided, and so is a claim with no decided comparison left.

A pooled comparison (a mean over settings: train sizes, shifts) combines its settings' estimates with random effects:
the mean of the J estimates, its variance the larger of their spread (sample variance / J) and their own variances
(sum / J²), with t on J - 1 df (Hartung-Knapp with its ad hoc floor), so that a grid holding more settings does
not narrow the interval by itself.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from bench.report.stats import LEVEL, Interval

HYPOTHESES = ("superiority", "non_inferiority", "equivalence")
ALPHA = (1 - LEVEL) / 2  # one-sided, per comparison: the printed 95% interval's ends are its bounds


@dataclass
class Comparison:
    """One difference a claim states: `compute()` gives its interval (None: not computable); `rows`: the summary
    rows it reads as (row, suffix of its side), for the learning gate and the power planner; `margin` >= 0 in the
    metric's units; `side` +1 or -1; `settings`: a pooled comparison's parts (random effects over them)."""

    label: str
    rows: list
    margin: float
    side: int
    text: str
    compute: Callable[[], Interval | None] | None = None
    settings: list = field(default_factory=list)
    unit: str = "points"
    weights: list = field(default_factory=list)  # the rows' weights in the difference (pooling averages them)
    undecided: str = ""  # why this comparison cannot be decided (a probe that measures nothing), if it cannot


@dataclass
class Finding:
    """A comparison's outcome: its verdict (reproduced / contradicted / inconclusive / not decided) and why."""

    comparison: Comparison
    verdict: str
    interval: Interval | None = None
    reason: str = ""
    seeds: int = 0
    examples: int = 0
    parts: list = field(default_factory=list)  # a pooled comparison's settings' intervals


def test_line(hypothesis: str, margin: float, side: int, alpha: float) -> str:
    """The stated test in words, e.g. `non-inferiority: Δ > −1 (one-sided α 0.025)`."""
    word = {"superiority": "superiority", "non_inferiority": "non-inferiority", "equivalence": "equivalence"}
    if hypothesis == "equivalence":
        return f"equivalence: |Δ| < {margin:g} (two one-sided tests, α {alpha:g} each)"
    bound = margin if hypothesis == "superiority" else -margin
    return f"{word[hypothesis]}: Δ {'>' if side > 0 else '<'} {side * bound + 0.0:+g} (one-sided α {alpha:g})"


def judge(iv: Interval, hypothesis: str, margin: float, side: int, alpha: float, k: int) -> tuple[str, str]:
    """One comparison's verdict and the reason in words (contradiction at alpha / k: Bonferroni over k)."""
    lo, hi = iv.bound(alpha, 1), iv.bound(alpha, -1)
    clo, chi = iv.bound(alpha / k, 1), iv.bound(alpha / k, -1)
    if hypothesis == "equivalence":
        if lo > -margin and hi < margin:
            return "reproduced", f"within ±{margin:g}"
        if clo > margin or chi < -margin:
            return "contradicted", f"outside ±{margin:g}"
        return "inconclusive", f"the interval crosses ±{margin:g}"
    x_lo, x_hi = (lo, hi) if side > 0 else (-hi, -lo)  # bounds of x = side · D
    cx_hi = chi if side > 0 else -clo
    threshold = margin if hypothesis == "superiority" else -margin
    if x_lo > threshold:
        return "reproduced", ""
    if cx_hi < -margin:
        return "contradicted", "significantly the other way" + (f", beyond the margin {margin:g}" if margin else "")
    if hypothesis == "superiority" and margin > 0 and x_hi < margin:
        return "inconclusive", f"did not clear the margin: significantly less than {margin:g}, not reversed"
    return "inconclusive", "the interval holds the margin"


def pooled(intervals: list[Interval], level: float = LEVEL) -> Interval:
    """Random effects over settings: the mean of their estimates, variance max(spread / J, sum of own / J²), t on
    J - 1 df (one setting: its own interval)."""
    from scipy import stats

    if len(intervals) == 1:
        return intervals[0]
    J = len(intervals)
    estimates = np.array([i.estimate for i in intervals])
    own = sum(i.se**2 for i in intervals) / J**2
    spread = float(np.var(estimates, ddof=1)) / J
    se = math.sqrt(max(spread, own))
    q = stats.t.ppf(0.5 + level / 2, J - 1)
    estimate = float(estimates.mean())
    return Interval(
        estimate,
        estimate - q * se,
        estimate + q * se,
        f"random effects over {J} settings (t, {J - 1} df)",
        se=se,
        df=J - 1,
    )


class Gate:
    """Did a system learn? Its cells' in-domain primary score must clear the task's floor: the majority class of
    the eval examples (from the records' gold labels) at the score's one-sided 97.5% lower bound. Methods that
    train nothing by design (steps 0: zero-shot prompt design) and generation tasks (no floor recorded) pass."""

    KEYS = ("grid", "task", "model", "variant", "train_size")

    def __init__(self, S, outputs: dict):
        self.rows, self.floors = {}, {}
        if len(S) == 0:
            return
        T = S[S["in_domain"] & S["primary"]]
        for r in T.to_dict("records"):
            self.rows[tuple(str(r[k]) for k in self.KEYS) + (str(r["hp"]),)] = r
            self.rows.setdefault(tuple(str(r[k]) for k in self.KEYS), r)
            if r["metric"] == "accuracy" and r["task"] not in self.floors:
                self.floors[r["task"]] = _majority(outputs, r)

    def __call__(self, row: dict, suffix: str = "") -> str | None:
        """None when the row's system learned (or the gate does not apply), else why not."""
        get = lambda k: row.get(k + suffix, row.get(k))  # noqa: E731
        key = tuple(str(get(k)) for k in self.KEYS)
        r = self.rows.get(key + (str(get("hp")),)) or self.rows.get(key)
        if r is None or float(json.loads(r["hp"]).get("steps", 1)) == 0:  # hp values may be strings
            return None
        floor = self.floors.get(r["task"])
        if floor is None or not math.isfinite(r.get("ci_low", math.nan)) or r["ci_low"] > floor:
            return None
        return (
            f"{r['variant']} did not learn {r['task']} on {r['model']} at this budget: in-domain accuracy "
            f"{r['mean']:.1f} [{r['ci_low']:.1f}, {r['ci_high']:.1f}] does not clear the majority class "
            f"{floor:.1f}"
        )

    def failures(self) -> list[list[str]]:
        """The in-domain rows that did not clear their floor, each with what would fix it: more seeds where the
        mean clears the floor but the interval does not (its seeds disagree), else a larger learning rate or more
        steps, chosen on a dev split."""
        out = []
        for key, r in self.rows.items():
            if len(key) != len(self.KEYS) + 1 or self(r) is None:  # each row once: by its key with hp
                continue
            hp = json.loads(r["hp"])
            floor = self.floors[r["task"]]
            fix = (
                f"its seeds disagree (std {r['std']:.1f}): more seeds (`python -m bench power`)"
                if r["mean"] > floor + 2
                else f"not above the majority class: a larger lr (now {hp.get('lr')}) or more steps (now "
                f"{hp.get('steps')}), "
                "chosen on a dev split (`dev_limit`, a list of `lr` values in the grid file)"
            )
            out.append(
                [
                    str(r["grid"]),
                    r["variant"],
                    r["task"],
                    r["model"],
                    str(r["train_size"]),
                    f"{r['mean']:.1f} [{r['ci_low']:.1f}, {r['ci_high']:.1f}] (n={r['seeds']})",
                    f"{floor:.1f}",
                    fix,
                ]
            )
        return out


def _majority(outputs: dict, row: dict) -> float | None:
    """The majority class's share (%) of the row's in-domain eval examples, from its first seed's gold labels."""
    for d in row["dirs"]:
        rows = (outputs.get(d) or {}).get(row["eval_set"])
        if rows:
            golds = [r.get("gold") for r in rows]
            if any(isinstance(g, (list, dict)) or g is None for g in golds):
                return None
            values, counts = np.unique([str(g) for g in golds], return_counts=True)
            return 100.0 * counts.max() / len(golds)
    return None


def decide(
    comparisons: list[Comparison], hypothesis: str, alpha: float = ALPHA, gate: Callable | None = None
) -> list[Finding]:
    """Each comparison's finding: not decided where the gate stops a system it reads (or where its interval cannot
    be computed), else judged on its interval."""
    k = max(1, len(comparisons))
    found = []
    for c in comparisons:
        parts = c.settings or [c]
        stopped = sorted(
            {why for p in parts for row, suffix in p.rows for why in [gate(row, suffix) if gate else None] if why}
        )
        if stopped and c.settings:  # a pooled comparison keeps the settings whose systems learned
            kept = [p for p in parts if not any(gate(row, suffix) for row, suffix in p.rows)]
            if kept:
                c = Comparison(c.label, [r for p in kept for r in p.rows], c.margin, c.side, c.text, None, kept, c.unit)
                parts, stopped = kept, [f"left out: {'; '.join(stopped)}"]
        if c.undecided:
            stopped = [c.undecided]
        if stopped and not c.settings:
            found.append(Finding(c, "not decided", None, "; ".join(stopped)))
            continue
        intervals = [p.compute() for p in parts]
        if any(i is None for i in intervals):
            found.append(
                Finding(
                    c,
                    "inconclusive",
                    None,
                    "no interval: the sides share no eval examples, or one seed and no per-example outputs",
                )
            )
            continue
        iv = pooled(intervals)
        verdict, reason = judge(iv, hypothesis, c.margin, c.side, alpha, k)
        variances = [i.variance for i in intervals if i.variance is not None]
        found.append(
            Finding(
                c,
                verdict,
                iv,
                "; ".join(filter(None, [reason, *stopped])),
                min((v.seeds for v in variances), default=0),
                min((v.examples for v in variances), default=0),
                intervals if c.settings else [],
            )
        )
    return found


def verdict_of(found: list[Finding], failed: str = "") -> tuple[str, str]:
    """The claim's verdict and its one-line reason: contradicted by any comparison (or a failed condition that
    needs no statistics, e.g. a parameter budget); else not decided where a comparison could not be decided (the
    claim cannot be reproduced in part); reproduced when every comparison is; else inconclusive."""
    if failed:
        return "contradicted", failed
    if not found:
        return "not run", ""
    verdicts = [f.verdict for f in found]
    if all(v == "reproduced" for v in verdicts):
        return "reproduced", ""
    first = deciding(found)
    return ("inconclusive" if first.verdict == "inconclusive" else first.verdict), first.reason


def deciding(found: list[Finding]) -> Finding:
    """The comparison that decides the claim: the first contradicting it, else the first not decided, else the
    first left inconclusive, else the first (all reproduce)."""
    for wanted in ("contradicted", "not decided", "inconclusive"):
        for f in found:
            if f.verdict == wanted:
                return f
    return found[0]
