"""Records' `curve` and `retention` (bench/harness/curves.py, bench/harness/retention.py) -> tables, plot data and
claims' comparisons.

Time to quality: a cell reaches fraction f of its final score at the first curve point whose score is at least
start + f · (final − start), start being the step-0 score and final the last point's: a fraction of the gain
training made. (f of the final score itself would be met at or near step 0 by any model whose untrained score is
close to f · final — SmolLM2's zero-shot SST-2 accuracy, 74.0 in the methods grid, is 86–91% of the trained
methods' — so it could not tell methods apart.) A cell with no gain (final <= start) has no time to quality and is left
out of the means.

Intervals: two levels as in bench/report/stats.py: Student's t over the per-seed values (methods with as many seeds
paired by seed), plus the sampling variance of the curve's eval examples or the retention passages and zero-shot
examples, from example-only bootstrap replicates drawn once per task for every method (paired), the statistic
recomputed from the drawn examples (each point's score from its per-example `correct` string, a loss from
per-passage sums).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.report.stats import BOOTSTRAP_SEED, LEVEL, Interval, from_replicates
from bench.report.tables import Table
from bench.report.verdicts import Comparison

FRACTIONS = (0.9, 0.95)
REPLICATES = 2000
KEYS = ["task", "model", "variant", "train_size"]  # a group's label in tables and plots
GROUP = (*KEYS, "method", "grid")  # a group: claims select on its method and pair within its grid (part)


@dataclass
class Seeds:
    """One group's per-seed measurements (rows: seeds) and how to turn drawn items into its statistic."""

    arrays: dict  # name -> np.ndarray (seeds x ...)
    items: int  # eval examples / passages shared by every group of the task


def records(cells: pd.DataFrame) -> list[tuple[dict, dict]]:
    """(cell row, record) of every ok cell whose record has a curve or retention."""
    out = []
    for cell in cells.to_dict("records"):
        if cell["status"] != "ok":
            continue
        record = json.loads((Path(cell["dir"]) / "record.json").read_text())
        if "curve" in record or "retention" in record:
            out.append((cell, record))
    return out


def _bits(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8) - ord("0")


# ------------------------------------------------------------------ per-group arrays
def curve_groups(found) -> dict[tuple, Seeds]:
    groups: dict[tuple, list] = {}
    for cell, record in found:
        if "curve" in record and all("correct" in p for p in record["curve"]["points"]):
            groups.setdefault(tuple(cell[k] for k in GROUP), []).append(record["curve"])
    out = {}
    for key, curves in groups.items():
        steps = [p["step"] for p in curves[0]["points"]]
        curves = [c for c in curves if [p["step"] for p in c["points"]] == steps]  # same schedule only
        out[key] = Seeds(
            {
                "correct": np.stack([np.stack([_bits(p["correct"]) for p in c["points"]]) for c in curves]),
                "seconds": np.array([[p["train_s"] for p in c["points"]] for c in curves]),
                "steps": np.array(steps),
                "eval_s": np.array([c["eval_s"] for c in curves]),
            },
            len(curves[0]["ids"]),
        )
    return out


def retention_groups(found) -> dict[tuple, Seeds]:
    groups: dict[tuple, list] = {}
    for cell, record in found:
        if "retention" in record:
            groups.setdefault(tuple(cell[k] for k in GROUP), []).append(record["retention"])
    out = {}
    for key, kept in groups.items():
        arrays = {
            "base_nll": np.array([r["lm"]["base_nll"] for r in kept]),
            "adapted_nll": np.array([r["lm"]["adapted_nll"] for r in kept]),
            "tokens": np.array([r["lm"]["tokens"] for r in kept], dtype=float),
        }
        if all("zero_shot" in r for r in kept):
            arrays["base_correct"] = np.stack([_bits(r["zero_shot"]["base_correct"]) for r in kept])
            arrays["adapted_correct"] = np.stack([_bits(r["zero_shot"]["adapted_correct"]) for r in kept])
            arrays["zero_shot_task"] = kept[0]["zero_shot"]["task"]
        out[key] = Seeds(arrays, arrays["tokens"].shape[1])
    return out


# ------------------------------------------------------------------ statistics: (Seeds, seed weights, item weights)
def scores(g: Seeds, w_items: np.ndarray) -> np.ndarray:
    """Per seed, per curve point: accuracy (%) on the drawn examples."""
    return 100.0 * (g.arrays["correct"] @ w_items) / w_items.sum()


def reach(curve: np.ndarray, fraction: float) -> np.ndarray:
    """Per seed (rows of `curve`: points), the index of the first point at start + fraction · gain; -1: no gain."""
    start, final = curve[:, :1], curve[:, -1:]
    hit = (curve >= start + fraction * (final - start) - 1e-9) & (final > start)
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1)


def to_fraction(g: Seeds, w_seeds: np.ndarray, w_items: np.ndarray, fraction: float, what: str = "steps") -> float:
    """Mean over drawn seeds (those with a gain) of the steps (or training seconds) to reach the fraction."""
    at = reach(scores(g, w_items), fraction)
    ok = at >= 0
    if not (w_seeds * ok).sum():
        return np.nan
    values = (
        g.arrays["steps"][np.maximum(at, 0)]
        if what == "steps"
        else g.arrays["seconds"][np.arange(len(at)), np.maximum(at, 0)]
    )
    return float((w_seeds * ok * values).sum() / (w_seeds * ok).sum())


def final_score(g, w_seeds, w_items) -> float:
    return float(w_seeds @ scores(g, w_items)[:, -1] / w_seeds.sum())


def loss_increase(g, w_seeds, w_items) -> float:
    """Mean over drawn seeds of (adapted − base) LM loss per token on the drawn passages (nats)."""
    a = g.arrays
    per_seed = ((a["adapted_nll"] - a["base_nll"]) @ w_items) / (a["tokens"] @ w_items)
    return float(w_seeds @ per_seed / w_seeds.sum())


def lm_loss(side: str):
    def stat(g, w_seeds, w_items):
        a = g.arrays
        return float(w_seeds @ ((a[f"{side}_nll"] @ w_items) / (a["tokens"] @ w_items)) / w_seeds.sum())

    return stat


def zero_shot(side: str):
    def stat(g, w_seeds, w_items):
        return float(w_seeds @ (100.0 * (g.arrays[f"{side}_correct"] @ w_items) / w_items.sum()) / w_seeds.sum())

    return stat


def zero_shot_change(g, w_seeds, w_items) -> float:
    return zero_shot("adapted")(g, w_seeds, w_items) - zero_shot("base")(g, w_seeds, w_items)


def curve_interval(
    groups: list[Seeds],
    weights: list[float],
    stat,
    level: float = LEVEL,
    seed: int = BOOTSTRAP_SEED,
    item_key: str | None = None,
) -> Interval:
    """Σ weights · stat(group) with its t interval, two levels as bench/report/stats.py: per-seed values (groups
    with as many seeds paired by seed index: seed i of each trained on the same sample) and example-only
    replicates (the items drawn once for all groups, seeds fixed). A seed whose statistic has no value (no gain,
    for time to quality) is left out of its group. `item_key`: the array whose last axis is the items, when not
    every statistic's items are `Seeds.items`."""
    rng = np.random.default_rng(seed)
    n_items = groups[0].arrays[item_key].shape[-1] if item_key else groups[0].items
    ones = np.ones(n_items)
    drawn = [np.bincount(rng.integers(0, n_items, n_items), minlength=n_items).astype(float) for _ in range(REPLICATES)]
    per_seed, replicates = {}, {}
    for g, w in zip(groups, weights):
        n = _n_seeds(g)
        unit = np.eye(n)
        values = np.array([stat(g, unit[k], ones) for k in range(n)])
        kept = np.isfinite(values)
        if not kept.any():
            return Interval(math.nan, math.nan, math.nan, "no seed with a value")
        reps = np.array([[stat(g, unit[k], d) for k in np.flatnonzero(kept)] for d in drawn])
        reps = np.where(np.isfinite(reps), reps, values[kept][None, :])  # a replicate without a value: the seed's
        key = tuple(np.flatnonzero(kept))
        per_seed[key] = per_seed.get(key, 0.0) + w * values[kept]
        replicates[key] = replicates.get(key, 0.0) + w * reps
    estimate = float(sum(v.mean() for v in per_seed.values()))
    return from_replicates(
        estimate, per_seed, replicates, n_items, level, f"seeds (t) + examples ({REPLICATES} bootstrap replicates)"
    )


def _n_seeds(g: Seeds) -> int:
    return len(next(v for v in g.arrays.values() if isinstance(v, np.ndarray) and v.ndim >= 2))


def _cell(interval: Interval, seeds: int, digits: int = 1) -> str:
    if not np.isfinite(interval.estimate):
        return "– (no gain)"
    shown = f"{interval.estimate:.{digits}f}"
    if np.isfinite(interval.low):
        shown += f" [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"
    return f"{shown} (n={seeds})"


# ------------------------------------------------------------------ tables
def curve_tables(found) -> list[Table]:
    groups = curve_groups(found)
    if not groups:
        return []
    rows = []
    for key, g in groups.items():
        n = _n_seeds(g)
        cells = [_cell(curve_interval([g], [1], final_score), n)]
        for f in FRACTIONS:
            cells += [
                _cell(curve_interval([g], [1], lambda g, s, i, f=f: to_fraction(g, s, i, f)), n, 0),
                _cell(curve_interval([g], [1], lambda g, s, i, f=f: to_fraction(g, s, i, f, "seconds")), n),
            ]
        rows.append(
            [
                *key[: len(KEYS)],
                f"{g.arrays['steps'][-1]} (every {g.arrays['steps'][1] - g.arrays['steps'][0]})",
                *cells,
                f"{g.arrays['eval_s'].mean():.1f}",
            ]
        )
    header = [
        *KEYS,
        "steps (eval every)",
        "final score",
        *(x for f in FRACTIONS for x in (f"steps to {f:.0%}", f"train s to {f:.0%}")),
        "curve eval s",
    ]
    return [
        Table(
            "Time to quality (learning curves)",
            header,
            rows,
            "Steps and training seconds (evaluations excluded) until a cell's curve first reaches its step-0 "
            "score plus 90% / 95% of the gain to its final score, mean over seeds [95% bootstrap interval over "
            "seeds and the curve's eval examples]; final score: the curve's last point (%). Curve eval s: "
            "seconds spent in the periodic evaluations, per cell (not in train s). bench/report/curves.py.",
        )
    ]


def retention_tables(found) -> list[Table]:
    groups = retention_groups(found)
    if not groups:
        return []
    rows = []
    for key, g in groups.items():
        n = _n_seeds(g)
        base, adapted = curve_interval([g], [1], lm_loss("base")), curve_interval([g], [1], lm_loss("adapted"))
        row = [
            *key[: len(KEYS)],
            _cell(base, n, 3),
            _cell(adapted, n, 3),
            _cell(curve_interval([g], [1], loss_increase), n, 3),
            f"{np.exp(base.estimate):.2f} → {np.exp(adapted.estimate):.2f}",
        ]
        if "base_correct" in g.arrays:
            row += [
                g.arrays["zero_shot_task"],
                _cell(curve_interval([g], [1], zero_shot("base"), item_key="base_correct"), n),
                _cell(curve_interval([g], [1], zero_shot("adapted"), item_key="base_correct"), n),
                _cell(curve_interval([g], [1], zero_shot_change, item_key="base_correct"), n),
            ]
        else:
            row += ["–"] * 4
        rows.append(row)
    first = next(iter(groups.values()))
    return [
        Table(
            "Retention (forgetting)",
            [
                *KEYS,
                "LM loss base",
                "LM loss adapted",
                "Δ loss",
                "perplexity",
                "zero-shot task",
                "base acc",
                "adapted acc",
                "Δ acc",
            ],
            rows,
            f"Language-modelling loss per token (nats; pooled over tokens) on {first.items} held-out XSum "
            "articles (first 128 tokens each; text no task here trains on), of the base model (before the "
            "method is applied) and of the adapted model (as evaluated: a soft prompt prepended), and the "
            "zero-shot accuracy (%) on another task's eval examples, rank-scored with that task's template. "
            "Mean over seeds [95% bootstrap interval over seeds and passages / examples]. Δ > 0 in loss, "
            "or < 0 in accuracy: general ability lost. bench/harness/retention.py.",
        )
    ]


def curve_points(found) -> pd.DataFrame:
    """Plot data: per group and curve point, step, mean training seconds, mean score and its 95% interval."""
    rows = []
    for key, g in curve_groups(found).items():
        for p, step in enumerate(g.arrays["steps"]):
            interval = curve_interval([g], [1], lambda g, s, i, p=p: float(s @ scores(g, i)[:, p] / s.sum()))
            rows.append(
                {
                    **dict(zip(KEYS, key)),
                    "step": int(step),
                    "train_s": float(g.arrays["seconds"][:, p].mean()),
                    "mean": interval.estimate,
                    "ci_low": interval.low,
                    "ci_high": interval.high,
                }
            )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ claims (kinds whose comparisons are read here)
def _select(groups: dict, sel: dict) -> dict:
    def match(key, value):
        return str(value) in {str(v) for v in (sel[key] if isinstance(sel[key], list) else [sel[key]])}

    return {k: g for k, g in groups.items() if all(match(name, value) for name, value in zip(GROUP, k) if name in sel)}


def _pairs(groups: dict, check: dict):
    """(label, left key, left group, right key, right group) aligned on task, model, train size and part; and what
    is missing."""
    where = check.get("where", {})
    left, right = _select(groups, {**where, **check["left"]}), _select(groups, {**where, **check["right"]})
    out = []
    for lk, lg in left.items():
        for rk, rg in right.items():
            if (lk[0], lk[1], lk[3], lk[5]) == (rk[0], rk[1], rk[3], rk[5]):  # task, model, train size, grid
                out.append((f"{lk[0]} {lk[2]} − {rk[2]}", lk, lg, rk, rg))
    gone = (
        []
        if out
        else [
            f"the grid has no records with a curve / retention for {check['left']} and "
            f"{check['right']} on one task (where {where})"
        ]
    )
    return out, gone


def _row(key: tuple) -> dict:
    """A group's key as the row the learning gate reads (bench.report.verdicts.Gate)."""
    return dict(zip(GROUP, key))


def check_time_to_fraction(cells, check, margin: float):
    """left needs more (op '>') or fewer (op '<') steps than right to reach `fraction` of its own gain."""
    pairs, gone = _pairs(curve_groups(records(cells)), check)
    side, fraction, what = (
        (1 if check.get("op", ">") in (">", ">=") else -1),
        check.get("fraction", 0.9),
        check.get("unit", "steps"),
    )
    comparisons = []
    for label, lk, lg, rk, rg in pairs:

        def stat(g, s, i):
            return to_fraction(g, s, i, fraction, what)

        text = (
            f"{what} to {fraction:.0%} of the gain {stat(lg, np.ones(_n_seeds(lg)), np.ones(lg.items)):.1f} vs "
            f"{stat(rg, np.ones(_n_seeds(rg)), np.ones(rg.items)):.1f}"
        )
        comparisons.append(
            Comparison(
                label,
                [(_row(lk), ""), (_row(rk), "")],
                margin,
                side,
                text,
                lambda lg=lg, rg=rg, stat=stat: curve_interval([lg, rg], [1, -1], stat),
                unit=what,
            )
        )
    return comparisons, [], gone


def check_retention(cells, check, margin: float):
    """measure `lm_loss_increase` (left − right, op '<': left loses less) or `zero_shot_change` (op '>'). A
    zero-shot probe that the base model answers at its majority class (every prediction one label) measures
    nothing: such pairs are left out, and said so."""
    pairs, gone = _pairs(retention_groups(records(cells)), check)
    measure = check.get("measure", "lm_loss_increase")
    stat, key = {"lm_loss_increase": (loss_increase, None), "zero_shot_change": (zero_shot_change, "base_correct")}[
        measure
    ]
    pairs = [p for p in pairs if key is None or all(key in g.arrays for g in (p[2], p[4]))]
    side = 1 if check.get("op", "<") in (">", ">=") else -1
    comparisons, notes = [], []
    for label, lk, lg, rk, rg in pairs:
        if key and not any((g.arrays["base_correct"] != g.arrays["adapted_correct"]).any() for g in (lg, rg)):
            comparisons.append(
                Comparison(
                    label,
                    [],
                    margin,
                    side,
                    "",
                    undecided=(
                        f"the zero-shot probe ({lg.arrays['zero_shot_task']}) gave the same answers before and after "
                        "adapting, in every seed of both methods: it measures nothing here"
                    ),
                )
            )
            continue
        ones = lambda g: (np.ones(_n_seeds(g)), np.ones(g.arrays[key].shape[-1] if key else g.items))  # noqa: E731
        text = f"{measure} {stat(lg, *ones(lg)):+.3f} vs {stat(rg, *ones(rg)):+.3f}"
        comparisons.append(
            Comparison(
                label,
                [(_row(lk), ""), (_row(rk), "")],
                margin,
                side,
                text,
                lambda lg=lg, rg=rg: curve_interval([lg, rg], [1, -1], stat, item_key=key),
                unit="nats" if key is None else "points",
            )
        )
    return comparisons, notes, gone
