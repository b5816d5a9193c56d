"""The power planner: how many seeds and eval examples would decide a claim, and what they cost.

`python -m bench power GRID [CLAIM]`. Per comparison, from its own variance components (bench.report.stats.Variance:
the seeds' own part, the seed-by-example part, the examples' shared part), the standard error at n seeds and m eval
examples is sqrt(own·n0/n + interaction·n0·m0/(n·m) + example·m0/m), with Welch-Satterthwaite df. At an assumed true
difference (the paper's `paper_effect` and the observed one), the plan is the cheapest (n, m) whose one-sided test at
the claim's alpha (alpha / k for a contradiction) reaches 80% power: m at most the eval set's real size, n at most
MAX_SEEDS. A pooled comparison (random effects over J settings) keeps its between-setting spread, which no number of
seeds or examples shrinks. Cost: cell-hours on this machine from the records' own train and eval seconds (eval
scaled by m / m0), and GPU-hours as config/resources.yaml requests them per cell (an upper bound a cluster books).
Approximate by design: the components are estimates from the records in hand (3 seeds give a rough seed part), and
the power uses the shifted central t, not the noncentral one.
"""

from __future__ import annotations

import json
import math

from bench.report.verdicts import Finding

POWER = 0.8
MAX_SEEDS = 50


def eval_set_size(task: str, eval_set: str) -> int | None:
    """The eval set's real size (all its examples), or None where the data root cannot tell."""
    from bench.api.errors import BenchError
    from bench.harness.tasks import get_task, split_size

    try:
        spec = get_task(task)
        return split_size(spec.eval_split if eval_set == task else spec.shifts[eval_set])
    except (BenchError, KeyError, OSError):
        return None


def _se_df(variance, n: int, m: int) -> tuple[float, float]:
    own = max(0.0, variance.seed - variance.interaction) * variance.seeds / n
    inter = variance.interaction * variance.seeds * variance.examples / (n * m)
    example = variance.example * variance.examples / m
    terms = [(own + inter, n - 1), (example, max(1, m - 1))]
    total = own + inter + example
    denominator = sum(v * v / df for v, df in terms if v > 0)
    return math.sqrt(total), (total**2 / denominator if denominator > 0 else math.inf)


def _power(distance: float, se: float, df: float, alpha: float) -> float:
    from scipy import stats

    if se == 0:
        return 1.0 if distance > 0 else 0.0
    dist = stats.t(df) if math.isfinite(df) else stats.norm
    return float(1 - dist.cdf(dist.ppf(1 - alpha) - distance / se))


def _distances(effect: float, hypothesis: str, margin: float, side: int) -> tuple[float, float]:
    """(distance from the reproduction threshold, from the contradiction one), positive where reachable."""
    if hypothesis == "equivalence":
        return margin - abs(effect), abs(effect) - margin
    x = side * effect
    return x - (margin if hypothesis == "superiority" else -margin), -margin - x


def _cost(f: Finding, rows_cost) -> tuple[float, float, float]:
    """(train seconds, eval seconds, requested GPU minutes) per seed, summed over the comparison's cells."""
    seen, train, evaluate, gpu = set(), 0.0, 0.0, 0.0
    for row, suffix in f.comparison.rows:
        get = lambda k: row.get(k + suffix, row.get(k))  # noqa: E731
        key = tuple(get("dirs") or ()) or (get("variant"), get("task"), get("model"))
        if key in seen:
            continue
        seen.add(key)
        t, e, g = rows_cost(get)
        train, evaluate, gpu = train + t, evaluate + e, gpu + g
    return train, evaluate, gpu


def row_cost(get) -> tuple[float, float, float]:
    """A summary row's mean train and eval seconds per cell, and its cell's requested GPU minutes."""
    from bench.grid.plan import _resources

    def number(key):
        value = get(key)
        return float(value) if value is not None and not (isinstance(value, float) and math.isnan(value)) else 0.0

    try:
        minutes = _resources(get("model"), get("method"), json.dumps(json.loads(get("hp")), sort_keys=True))["runtime"]
    except Exception:  # a row without its model, method or hp (curves' groups): no GPU estimate
        minutes = 0.0
    return number("train_s"), number("eval_s"), float(minutes)


def plan(f: Finding, hypothesis: str, alpha: float, k: int, effect: float, cap: int | None, rows_cost=row_cost) -> dict:
    """The cheapest (seeds, examples) with 80% power to decide the comparison at a true difference `effect`."""
    c, iv = f.comparison, f.interval
    repro, contra = _distances(effect, hypothesis, c.margin, c.side)
    if repro > 0:
        distance, level, goal = repro, alpha, "reproduce"
    elif contra > 0:
        distance, level, goal = contra, alpha / k, "contradict"
    else:
        return {
            "effect": effect,
            "goal": None,
            "why": "at this effect neither side of the margin is reachable: no number of seeds or examples decides it",
        }
    parts = [p for p in (f.parts or [iv]) if p is not None and p.variance is not None]
    if not parts:
        return {"effect": effect, "goal": goal, "why": "no variance components (records without per-example outputs)"}
    if min(p.variance.seeds for p in parts) < 2:
        return {
            "effect": effect,
            "goal": goal,
            "why": "one seed: the records hold no seed variance to plan from (run at least 3 seeds first)",
        }
    m0 = min(p.variance.examples for p in parts) or 1
    sizes = sorted({m0, *(x for x in (cap,) if x and x > m0)} | ({min(cap, 2 * m0)} if cap and cap > m0 else set()))
    train, evaluate, gpu = _cost(f, rows_cost)
    spread = 0.0
    if len(parts) > 1:  # random effects: the settings' spread beyond their own noise stays
        import numpy as np

        spread = max(0.0, float(np.var([p.estimate for p in parts], ddof=1)) - float(np.mean([p.se**2 for p in parts])))
    best = None
    for m in sizes:
        for n in range(2, MAX_SEEDS + 1):
            pieces = [_se_df(p.variance, n, m) for p in parts]
            if len(parts) > 1:
                J = len(parts)
                se = math.sqrt(
                    max(spread / J + sum(s * s for s, _ in pieces) / J**2, sum(s * s for s, _ in pieces) / J**2)
                )
                df = J - 1
            else:
                se, df = pieces[0]
            if _power(distance, se, df, level) >= POWER:
                hours = n * (train + evaluate * m / m0) / 3600
                if best is None or hours < best["cell_hours"]:
                    best = {"seeds": n, "examples": m, "cell_hours": hours, "gpu_hours": n * gpu / 60}
                break
    if best is None:
        return {
            "effect": effect,
            "goal": goal,
            "why": f"even {MAX_SEEDS} seeds × {sizes[-1]} examples fall short "
            "of 80% power" + (" (the settings' spread stays)" if len(parts) > 1 else ""),
        }
    return {"effect": effect, "goal": goal, **best}


def plan_line(p: dict) -> str:
    if p.get("goal") is None or "seeds" not in p:
        return f"at Δ {p['effect']:+.2f}: {p['why']}"
    return (
        f"at Δ {p['effect']:+.2f}: {p['seeds']} seeds × {p['examples']} examples to {p['goal']} with 80% power "
        f"({p['cell_hours']:.1f} cell-hours here, ≤ {p['gpu_hours']:.1f} GPU-hours requested)"
    )


def claim_plans(result: dict) -> list[tuple[str, list[str]]]:
    """Per comparison of a claim (inconclusive or not yet decided by an interval): its plans at the paper's effect
    and at the observed one."""
    hypothesis, alpha = result["check"]["hypothesis"], float(result["check"].get("alpha", 0.025))
    effect = result.get("paper_effect")
    out = []
    for f in result["found"]:
        if f.interval is None or f.verdict in ("reproduced", "not decided"):
            continue
        metric = next((row.get("metric" + s, row.get("metric")) for row, s in f.comparison.rows), None)
        paper = effect.get(metric) if isinstance(effect, dict) else effect  # per metric, or the claim's one number
        caps = [
            eval_set_size(row.get("task" + s, row.get("task")), row.get("eval_set" + s, row.get("eval_set")))
            for row, s in f.comparison.rows
            if row.get("task" + s, row.get("task"))
        ]
        cap = min((c for c in caps if c), default=None)
        lines = []
        if paper is not None:
            lines.append(
                "paper's effect " + plan_line(plan(f, hypothesis, alpha, len(result["found"]), float(paper), cap))
            )
        lines.append(
            "observed " + plan_line(plan(f, hypothesis, alpha, len(result["found"]), f.interval.estimate, cap))
        )
        out.append((f.comparison.label, lines))
    return out
