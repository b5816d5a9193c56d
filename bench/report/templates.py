"""Template sensitivity: per task x model x method, the score under every template (hp `template`), their spread, and
the interval of a spread difference (the claim kind `spread`: one method family's spread across templates minus
another's)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.api.metrics import per_example
from bench.harness.tasks import DEFAULT_TEMPLATE
from bench.report.stats import BOOTSTRAP_SEED, LEVEL, Interval, _aligned, _weights, from_replicates
from bench.report.tables import Table, fmt

TEMPLATE = "template"
GROUP = ["task", "model", "method", "train_size", "eval_set", "metric"]


def template_name(value) -> str:
    return str(value) if isinstance(value, str) and value else DEFAULT_TEMPLATE


def by_template(S: pd.DataFrame, hp_cols: list[str]) -> list[tuple[tuple, dict]]:
    """(group key: GROUP + the other varying hps, {template name: summary row}) for every group scored under >= 2
    templates (in-domain, primary metric)."""
    if TEMPLATE not in hp_cols or S.empty:
        return []
    T = S[S["primary"] & S["in_domain"]]
    others = [c for c in hp_cols if c != TEMPLATE]
    out = []
    for key, g in T.groupby(GROUP + others, sort=False):
        rows = {template_name(r[TEMPLATE]): r for r in g.to_dict("records")}
        if len(rows) >= 2:
            out.append((key, rows))
    return out


def template_tables(S: pd.DataFrame, hp_cols: list[str]) -> list[Table]:
    groups = by_template(S, hp_cols)
    if not groups:
        return []
    names = list(dict.fromkeys(n for _, rows in groups for n in rows))
    others = [c for c in hp_cols if c != TEMPLATE]
    body = []
    for key, rows in groups:
        means = np.array([r["mean"] for r in rows.values()])
        body.append(
            [
                *key[:4],
                *key[len(GROUP) :],
                *(fmt(rows.get(n)) for n in names),
                f"{means.max() - means.min():.1f}",
                f"{means.std(ddof=1):.1f}",
            ]
        )
    return [
        Table(
            "Template sensitivity (in-domain, primary metric)",
            ["task", "model", "method", "train size", *others, *names, "max − min", "std"],
            body,
            "Each template is a prompt + verbalizer of config/tasks.yaml (hp `template`); spread over the "
            "templates' means (std: sample std over templates). The claim `template_sensitivity` tests the "
            "difference of spreads, per seed.",
        )
    ]


def spread_interval(
    systems, weights, level: float = LEVEL, seed: int = BOOTSTRAP_SEED, resamples: int = 2_000
) -> Interval | None:
    """Interval of the mean over seeds of each seed's (max − min over the systems weighted +1) − (max − min over
    those weighted −1), two levels as bench/report/stats.py: t over the per-seed spreads, plus the eval examples'
    variance from example-only bootstrap replicates (seeds fixed; the same draw for every system). Per seed, not of
    the seed means: the spread is not linear, and a per-seed value is what t needs. Metrics that are means over
    examples only; None otherwise (or without shared examples, or with systems of other seeds)."""
    if (
        any(s.outputs is None or per_example(s.metric) is None for s in systems)
        or len({s.seeds for s in systems}) != 1
        or len({s.space for s in systems}) != 1
    ):
        return None
    ids = _aligned(systems)
    if ids is None:
        return None
    order = {i: k for k, i in enumerate(next(iter(ids.values())))}
    value = per_example(systems[0].metric)
    example_values = []  # systems x seeds x examples
    for s in systems:
        seeds = []
        for rows in s.outputs:
            v = np.zeros(len(order))
            for r in rows:
                if r["id"] in order:
                    v[order[r["id"]]] = value(r)
            seeds.append(v)
        example_values.append(seeds)
    X = np.array(example_values)
    rng = np.random.default_rng(seed)
    up, down = np.array(weights) > 0, np.array(weights) < 0

    def statistic(scores):  # systems x seeds x replicates -> seeds x replicates
        return np.ptp(scores[up], axis=0) - np.ptp(scores[down], axis=0)

    per_seed = statistic(X.mean(axis=2)[..., None])[:, 0]
    drawn = _weights(rng, X.shape[2], resamples)  # replicates x examples
    replicates = statistic(np.einsum("kse,be->ksb", X, drawn)).T  # replicates x seeds
    return from_replicates(
        float(per_seed.mean()),
        {systems[0].seeds: per_seed},
        {systems[0].seeds: replicates},
        X.shape[2],
        level,
        f"seeds (t) + examples ({resamples:,} bootstrap replicates), per-seed spreads",
    )


def spread_comparisons(S, cells, hp_cols, c, comparison):
    """Claim kind `spread`: for every task/model/train size/eval set where both `left` and `right` (selectors) are
    scored under >= 2 common templates, spread(left) − spread(right) beyond the margin. `comparison` builds a
    bench.report.claims.Comparison (passed in: report_claims imports this module)."""
    groups = by_template(S, hp_cols)
    if not groups:
        return [], [], ["the grid has no method scored under two or more templates (hp template)"], False
    left, right = c["left"], c["right"]

    def matches(row, sel):
        return all(str(row.get(k)) in {str(v) for v in (w if isinstance(w, list) else [w])} for k, w in sel.items())

    comparisons, notes, gone = [], [], []
    aligned: dict[tuple, dict] = {}
    for key, rows in groups:
        first = next(iter(rows.values()))
        for side, sel in (("left", left), ("right", right)):
            if matches(first, {**c.get("where", {}), **sel}):
                aligned.setdefault(
                    (first["task"], first["model"], first["train_size"], first["eval_set"], first["metric"]), {}
                ).setdefault(side, []).append(rows)
    for key, sides in aligned.items():
        if set(sides) != {"left", "right"}:
            gone.append(f"{'/'.join(map(str, key))}: needs both sides, has {sorted(sides)}")
            continue
        for lrows in sides["left"]:
            for rrows in sides["right"]:
                common = [n for n in lrows if n in rrows] if c.get("same_templates", True) else None
                lt = common if common is not None else list(lrows)
                rt = common if common is not None else list(rrows)
                if len(lt) < 2 or len(rt) < 2:
                    gone.append(f"{'/'.join(map(str, key))}: fewer than 2 common templates")
                    continue
                lsel, rsel = [lrows[n] for n in lt], [rrows[n] for n in rt]
                spread = lambda rs: max(r["mean"] for r in rs) - min(r["mean"] for r in rs)  # noqa: E731
                label = f"{key[0]} {key[1]} n{key[2]}: {lsel[0]['method']} vs {rsel[0]['method']} over {', '.join(lt)}"
                comparisons.append(
                    comparison(
                        label,
                        [(r, "") for r in lsel + rsel],
                        [1.0] * len(lsel) + [-1.0] * len(rsel),
                        f"spread {spread(lsel):.1f} vs {spread(rsel):.1f}",
                    )
                )
    return comparisons, notes, gone, False
