"""Template sensitivity: per task x model x method, the score under every template (hp `template`), their spread, and
the bootstrap of a spread difference (the claim kind `spread`: one method family's spread across templates minus
another's)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from bench.report_stats import MEAN_METRICS, Interval, _aligned, _interval
from bench.report_tables import Table, fmt
from bench.tasks import DEFAULT_TEMPLATE

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
        body.append([*key[:4], *key[len(GROUP):], *(fmt(rows.get(n)) for n in names),
                     f"{means.max() - means.min():.1f}", f"{means.std(ddof=1):.1f}"])
    return [Table("Template sensitivity (in-domain, primary metric)", ["task", "model", "method", "train size",
                                                                       *others, *names, "max − min", "std"], body,
                  "Each template is a prompt + verbalizer of config/tasks.yaml (hp `template`); spread over the "
                  "templates' means (std: sample std over templates). The claim `template_sensitivity` bootstraps "
                  "the difference of spreads.")]


def spread_bootstrap(systems, weights, level: float, seed: int, resamples: int = 10_000) -> Interval | None:
    """Interval of (max − min over the systems weighted +1) − (max − min over those weighted −1): per replicate the
    eval examples (shared by all systems) and the seeds (shared by systems with the same seeds) are drawn with
    replacement. Metrics that are means over examples only; None otherwise (or without shared examples)."""
    if any(s.outputs is None or s.metric not in MEAN_METRICS for s in systems) or len(
            {s.seeds for s in systems}) != 1 or len({s.space for s in systems}) != 1:
        return None
    ids = _aligned(systems)
    if ids is None:
        return None
    order = {i: k for k, i in enumerate(next(iter(ids.values())))}
    value = MEAN_METRICS[systems[0].metric]
    per_example = []  # systems x seeds x examples
    for s in systems:
        seeds = []
        for rows in s.outputs:
            v = np.zeros(len(order))
            for r in rows:
                if r["id"] in order:
                    v[order[r["id"]]] = value(r)
            seeds.append(v)
        per_example.append(seeds)
    X = np.array(per_example)
    rng = np.random.default_rng(seed)
    n_seeds, n_examples = X.shape[1], X.shape[2]
    up, down = np.array(weights) > 0, np.array(weights) < 0

    def statistic(scores):  # systems x replicates
        return np.ptp(scores[up], axis=0) - np.ptp(scores[down], axis=0)

    draws = []
    for start in range(0, resamples, 500):
        count = min(500, resamples - start)
        seed_w = np.stack([np.bincount(rng.integers(n_seeds, size=n_seeds), minlength=n_seeds) / n_seeds
                           for _ in range(count)])  # replicates x seeds
        ex_w = np.stack([np.bincount(rng.integers(n_examples, size=n_examples), minlength=n_examples) / n_examples
                         for _ in range(count)])  # replicates x examples
        scores = np.einsum("kse,bs,be->kb", X, seed_w, ex_w)
        draws.append(statistic(scores))
    estimate = float(statistic(X.mean(axis=(1, 2))[:, None])[0])
    return _interval(estimate, np.concatenate(draws), level, f"seeds × examples, {resamples:,} resamples (spread)")


def spread_comparisons(S, cells, hp_cols, c, comparison):
    """Claim kind `spread`: for every task/model/train size/eval set where both `left` and `right` (selectors) are
    scored under >= 2 common templates, spread(left) − spread(right) beyond the margin. `comparison` builds a
    bench.report_claims.Comparison (passed in: report_claims imports this module)."""
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
                aligned.setdefault((first["task"], first["model"], first["train_size"], first["eval_set"],
                                    first["metric"]), {}).setdefault(side, []).append(rows)
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
                comparisons.append(comparison(label, [(r, "") for r in lsel + rsel],
                                              [1.0] * len(lsel) + [-1.0] * len(rsel),
                                              f"spread {spread(lsel):.1f} vs {spread(rsel):.1f}"))
    return comparisons, notes, gone, False
