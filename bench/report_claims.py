"""config/claims.yaml -> verdicts (reports/<grid>/claims.md), decided on paired bootstrap intervals.

Each check turns a claim into comparisons: a weighted sum of summary rows' scores (left − right; a gap's change;
one prompt length's gain over another) that the claim says lies beyond its `margin` (points) on one side. Each
comparison gets a bootstrap interval over seeds and over the *same* eval examples for every row in it
(bench/report_stats.py); with k comparisons in one claim each interval is at level 1 − 0.05/k (Bonferroni).
A comparison is reproduced when its interval lies wholly beyond the margin on the claim's side, contradicted when
wholly on the other side, inconclusive otherwise; a claim is reproduced when all its comparisons are, contradicted
when one is, inconclusive otherwise, and not run when its cells are absent. Records without per-example outputs
(older ones) cannot be paired: their claims are inconclusive.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.report_curves import OWN_CHECKS
from bench.report_stats import BOOTSTRAP_SEED, LEVEL, bootstrap, needed
from bench.report_summary import KEYS, _num, system
from bench.report_tables import fmt, human
from bench.report_templates import spread_bootstrap, spread_comparisons

CLAIMS = Path(__file__).resolve().parent.parent / "config" / "claims.yaml"
ALIGN = ["grid", "task", "model", "train_size", "eval_set", "metric"]  # grid: a grid of parts pairs within a part


# ------------------------------------------------------------------ claims (config/claims.yaml)
SIDE = {">=": 1, ">": 1, "<=": -1, "<": -1}  # the claim's side of the margin: above or below


def select(S: pd.DataFrame, sel: dict, by: str | None = None) -> pd.DataFrame:
    """Rows matching every key (a value or a list): a summary column or any resolved hyperparameter.
    Default: the task's primary metric, in-domain eval set. model: smallest|largest picks by size, among the
    models with more than one value of `by` where any has (an ablation's smallest model, not one it skipped)."""
    if S.empty:
        return S
    T = S if "metric" in sel else S[S["primary"]]
    T = T if "eval_set" in sel or "in_domain" in sel else T[T["in_domain"]]
    for key, want in sorted(sel.items(), key=lambda kv: kv[1] in ("smallest", "largest")):
        if T.empty:
            return T
        if key == "model" and want in ("smallest", "largest"):
            C = T
            if by is not None:
                ablated = C[_values(C, by).astype(str).groupby(C["model"]).transform("nunique") > 1]
                C = C if ablated.empty else ablated
            want = C.loc[C["model_params"].idxmin() if want == "smallest" else C["model_params"].idxmax(), "model"]
        T = T[_isin(_values(T, key), want)]
    return T


def _values(T: pd.DataFrame, key: str) -> pd.Series:
    """A summary column, or a resolved hyperparameter read from `hp`."""
    return T[key] if key in T else T["hp"].map(lambda h: json.loads(h).get(key))


def _isin(values: pd.Series, want) -> pd.Series:
    return values.astype(str).isin({str(w) for w in (want if isinstance(want, list) else [want])})


def missing(cells: pd.DataFrame, sel: dict) -> str:
    """Which cells a selection needs and lacks, named by directory."""
    C, desc = cells, ", ".join(f"{k}={v}" for k, v in sel.items())
    for key in KEYS:
        if key in sel and sel[key] not in ("smallest", "largest"):
            C = C[_isin(C[key], sel[key])]
    if C.empty:
        return f"the grid has no cells with {desc}"
    bad = C[C["status"] != "ok"]
    if bad.empty:
        return f"no results with {desc} (the records lack that eval set, metric or hyperparameter value)"
    named = [f"{d} ({s})" for d, s in zip(bad["dir"], bad["status"])]
    more = f"; … and {len(named) - 8} more (see cells.csv)" if len(named) > 8 else ""
    return f"{desc}: " + "; ".join(named[:8]) + more


def _varying(T: pd.DataFrame, keys: list[str]) -> list[str]:
    """The keys that tell rows of T apart (labels leave out what the whole selection shares)."""
    return [k for k in keys if T[k].nunique() > 1]


def _side(r: dict, suffix: str) -> dict:
    return {k: r.get(k + suffix, math.nan) for k in ("mean", "ci_low", "ci_high", "seeds", "stale")}


@dataclass
class Comparison:
    """The claim: sum(weights · scores of rows) lies beyond `margin` on `side` (+1 above, −1 below)."""

    label: str
    rows: list  # (summary row, suffix of its side in a merged pair)
    weights: list
    margin: float
    side: int
    text: str
    interval: object = None  # (systems, weights, level, seed) -> Interval; default: the weighted sum's bootstrap


def deciding(found: list[str], shorts: list[str]) -> str:
    """The comparison that decides a claim, in short, for the README's table: the first that contradicts it, else
    the first left inconclusive, else the first (all reproduce); `(i of k)` where there are several."""
    if not shorts:
        return ""
    i = next((i for i, v in enumerate(found) if v == "contradicted"),
             next((i for i, v in enumerate(found) if v.startswith("inconclusive")), 0))
    return shorts[i] + (f" ({i + 1} of {len(shorts)} comparisons)" if len(shorts) > 1 else "")


def decide(comparisons: list[Comparison], make_system, failed: bool = False,
           seed: int = BOOTSTRAP_SEED) -> tuple[str, list[str], str]:
    """The claim's verdict, one line per comparison and the deciding one in short (`deciding`);
    `make_system(row, suffix)` -> bench.report_stats.System; `failed`: a condition of the claim that needs no
    statistics does not hold (a parameter budget)."""
    level = 1 - (1 - LEVEL) / max(1, len(comparisons))
    found, lines, shorts = [], [], []
    for c in comparisons:
        systems = [make_system(row, suffix) for row, suffix in c.rows]
        models = "/".join(dict.fromkeys(str(row.get("model", row.get("model" + suffix))) for row, suffix in c.rows))
        if any(s.outputs is None for s in systems):
            found.append("inconclusive (no per-example outputs)")
            lines.append(f"{c.label}: {c.text}; no per-example outputs: cannot be paired")
            shorts.append(f"{c.text}; {models}; no per-example outputs")
            continue
        interval = (c.interval or bootstrap)(systems, c.weights, level=level, seed=seed)
        if interval is None:
            found.append("inconclusive")
            lines.append(f"{c.label}: {c.text}; the two sides share no eval examples")
            shorts.append(f"{c.text}; {models}; no shared eval examples")
            continue
        low, high = interval.low - c.margin, interval.high - c.margin
        verdict = ("reproduced" if c.side * low > 0 and c.side * high > 0 else
                   "contradicted" if c.side * low < 0 and c.side * high < 0 else "inconclusive")
        found.append(verdict)
        seeds = min(len(s.seeds) for s in systems)
        examples = min(len(rows) for s in systems for rows in s.outputs)
        lines.append(f"{c.label}: {c.text}: Δ {interval.estimate:+.2f} [{interval.low:+.2f}, {interval.high:+.2f}] "
                     f"({100 * level:.1f}% interval, {interval.method}; claim: {'>' if c.side > 0 else '<'} "
                     f"{c.margin:+g}) → {verdict}"
                     + (f"; {needed(interval, c.margin, seeds, examples)}" if verdict == "inconclusive" else ""))
        shorts.append(f"{c.label}: {c.text}: Δ {interval.estimate:+.2f} [{interval.low:+.2f}, {interval.high:+.2f}]; "
                      f"{models}; n = {seeds} seeds × {examples} examples")
    if not found:
        return "not run", lines, ""
    if failed or "contradicted" in found:
        return "contradicted", lines, deciding(found, shorts)
    if all(v == "reproduced" for v in found):
        return "reproduced", lines, deciding(found, shorts)
    return ("inconclusive (no per-example outputs)" if all(v.endswith("outputs)") for v in found)
            else "inconclusive"), lines, deciding(found, shorts)


def _pairs(S, cells, c):
    """Left and right selections joined on every ALIGN key that neither side names (hp columns ignored)."""
    where = c.get("where", {})
    L, R = select(S, {**where, **c["left"]}), select(S, {**where, **c["right"]})
    gone = [missing(cells, {**where, **side}) for side, T in ((c["left"], L), (c["right"], R)) if T.empty]
    on = [k for k in ALIGN if k not in c["left"] and k not in c["right"]]
    P = L.merge(R, on=on, suffixes=("_l", "_r")) if not gone else L.iloc[0:0]
    if not gone and P.empty:
        gone = [f"left and right share no {'/'.join(on)}"]
    return P, on, gone


def _once(P: pd.DataFrame, on: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """One pair per setting: where two parts of a grid of parts ran the same cells (same hyperparameters and seeds)
    and got the same scores, the later part's pair repeats the first's and would count that setting twice. (A size
    ladder keeps its repeats: each part's ladder is its own comparison.)"""
    if "grid" not in on or P.empty:
        return P, []
    same = [k for k in on if k != "grid"] + [f"{k}{s}" for k in ("method", "hp", "seed_list", "values")
                                             for s in ("_l", "_r")]
    key = P[same].astype(str).agg("|".join, axis=1)
    repeat = key.duplicated()
    first = dict(zip(key[~repeat], P.loc[~repeat, "grid"]))
    shown = [k for k in _varying(P, on) if k != "grid"]
    notes = []
    for k, r in zip(key[repeat], P[repeat].to_dict("records")):
        setting = " ".join(f"{c}={r[c]}" for c in shown) or "all"
        notes.append(f"{setting}: {r['grid']} ran the same cells as {first[k]} (same hyperparameters, seeds and "
                     "scores): counted once")
    return P[~repeat], notes


def _margin(c: dict, metric: str | None = None) -> float:
    """A claim's margin in points: one number, or per metric (`{nist: -0.1, cider: -0.05, default: -1.0}`) where
    a claim compares metrics printed on different scales (NIST and CIDEr raw, the others ×100)."""
    margin = c["margin"]
    return float(margin.get(metric, margin["default"]) if isinstance(margin, dict) else margin)


def check_compare(S, cells, hp_cols, c):
    P, on, gone = _pairs(S, cells, c)
    if gone:
        return [], [], gone, False
    P, repeats = _once(P, on)
    side, keys = SIDE[c.get("op", ">=")], _varying(P, on)
    pairs = P.to_dict("records")
    texts = [f"{_named(r, '_l', c)} {fmt(_side(r, '_l'))} vs {_named(r, '_r', c)} {fmt(_side(r, '_r'))}" for r in pairs]
    if c.get("reduce") == "mean":
        m = len(pairs)
        comparisons = [Comparison(f"mean over {m} pairs", [(r, s) for r in pairs for s in ("_l", "_r")],
                                  [w / m for _ in pairs for w in (1, -1)], _margin(c), side,
                                  f"{P['mean_l'].mean():.1f} vs {P['mean_r'].mean():.1f} ({'; '.join(texts)})")]
    else:
        comparisons = [Comparison(" ".join(str(r[k]) for k in keys) or "all", [(r, "_l"), (r, "_r")], [1, -1],
                                  _margin(c, r.get("metric", r.get("metric_l"))), side, text)  # left's metric
                       for r, text in zip(pairs, texts)]
    notes, failed = repeats, False
    if "trainable_pct_below" in c:
        pct = P["trainable_pct_l"].max()
        notes.append(f"left trainable % (max): {pct:.3f} (claim: < {c['trainable_pct_below']})")
        failed = bool(pct >= c["trainable_pct_below"])
    return comparisons, notes, [], failed


def _named(r: dict, suffix: str, c: dict) -> str:
    """A side's variant, and where both sides are one variant what tells them apart (e.g. the metric read)."""
    if r["variant_l"] != r["variant_r"]:
        return r[f"variant{suffix}"]
    own, other = (c["left"], c["right"]) if suffix == "_l" else (c["right"], c["left"])
    differ = [v if k == "metric" else f"{k}={v}" for k, v in own.items() if other.get(k) != v]
    return f"{r[f'variant{suffix}']} ({', '.join(map(str, differ))})" if differ else r[f"variant{suffix}"]


def check_gap_shrinks(S, cells, hp_cols, c):
    """The gap (left − right) at the smallest model minus the gap at the largest (and, strict, between every two
    consecutive sizes) is above the margin."""
    P, on, gone = _pairs(S, cells, c)
    comparisons, notes, by = [], [], [k for k in on if k != "model"] + ["variant_l", "variant_r"]
    for _, g in (P.groupby(by, sort=False) if not gone else []):
        label = " ".join(str(g[k].iloc[0]) for k in _varying(P, by)) or "all"
        sizes = g.sort_values("model_params_l").groupby("model", sort=False)
        rows = {model: m.to_dict("records") for model, m in sizes}
        models = list(rows)
        if len(models) < 2:
            gone.append(f"{label}: needs ≥ 2 model sizes, has {models}")
            continue
        gaps = {m: sum(r["mean_l"] - r["mean_r"] for r in rows[m]) / len(rows[m]) for m in models}
        notes.append(f"{label}: gap by size " + ", ".join(f"{m} ({human(rows[m][0]['model_params_l'])}) "
                                                          f"{gaps[m]:+.1f}" for m in models))
        steps = list(zip(models, models[1:])) if c.get("strict") else [(models[0], models[-1])]
        for small, large in steps:
            parts = [(r, s, w / len(rows[m])) for m, sign in ((small, 1), (large, -1)) for r in rows[m]
                     for s, w in (("_l", sign), ("_r", -sign))]
            comparisons.append(Comparison(f"{label}: gap {small} − gap {large}", [(r, s) for r, s, _ in parts],
                                          [w for *_, w in parts], _margin(c), 1,
                                          f"{gaps[small]:+.1f} − {gaps[large]:+.1f}"))
    return comparisons, notes, gone, False


def _groups(S, cells, hp_cols, c):
    """Per group of otherwise equal rows: its label and its rows by the value of `by`."""
    by = c["by"]
    T = select(S, c.get("where", {}), by)
    if T.empty:
        return [], [missing(cells, c.get("where", {}))]
    if by not in T:  # a hyperparameter that does not vary in this grid: one value, read from `hp`
        T = T.assign(**{by: _values(T, by).astype(str)})
    on = [k for k in ALIGN + ["method"] + hp_cols if k != by and (k not in hp_cols or (T[k] != "").all())]
    keys = _varying(T, on)
    return [(" ".join(f"{k}={g[k].iloc[0]}" if k in hp_cols else str(g[k].iloc[0]) for k in keys) or "all",
             {str(v): rows.to_dict("records") for v, rows in g.groupby(by)}) for _, g in T.groupby(on, sort=False)], []


def _step(label, by, a, b, rows, margin, side) -> Comparison:
    """score(by=a) − score(by=b) beyond margin on side; several rows per value: their mean."""
    ra, rb = rows[a], rows[b]
    mean = lambda rs: sum(r["mean"] for r in rs) / len(rs)  # noqa: E731
    return Comparison(f"{label}: {by}={a} − {by}={b}", [(r, "") for r in ra + rb],
                      [1 / len(ra)] * len(ra) + [-1 / len(rb)] * len(rb), margin, side,
                      f"{by}={a} {mean(ra):.1f} vs {by}={b} {mean(rb):.1f}")


def check_ordering(S, cells, hp_cols, c):
    groups, gone = _groups(S, cells, hp_cols, c)
    comparisons = []
    for label, rows in groups:
        order = c["order"]
        if order in ("increasing", "decreasing"):
            order = sorted(rows, key=_num, reverse=order == "increasing")
        order = [str(v) for v in order]
        if not set(order) <= set(rows) or len(order) < 2:
            gone.append(f"{label}: needs {c['by']} ∈ {order}, has {sorted(rows, key=_num)}")
            continue
        comparisons += [_step(label, c["by"], a, b, rows, _margin(c), 1) for a, b in zip(order, order[1:])]
    return comparisons, [], gone, False


def check_plateau(S, cells, hp_cols, c):
    """Every value of `by` above `after` gains less than the margin over `after`."""
    groups, gone = _groups(S, cells, hp_cols, c)
    comparisons, after = [], float(c["after"])
    for label, rows in groups:
        xs = {_num(v)[1]: v for v in rows if _num(v)[0] == 0}
        if after not in xs or not any(x > after for x in xs):
            gone.append(f"{label}: needs {c['by']}={after:g} and a larger value, has {sorted(xs)}")
            continue
        comparisons += [_step(label, c["by"], xs[x], xs[after], rows, _margin(c), -1) for x in sorted(xs) if x > after]
    return comparisons, [], gone, False


def check_spread(S, cells, hp_cols, c):
    """The spread of `left`'s scores across templates minus `right`'s (bench/report_templates.py) beyond the margin."""
    def comparison(label, rows, weights, text):
        return Comparison(label, rows, weights, _margin(c), SIDE[c.get("op", ">=")], text, spread_bootstrap)

    return spread_comparisons(S, cells, hp_cols, c, comparison)


# each: (summary, cells, hp columns, the claim's check) -> (comparisons, notes, missing cells, failed)
CHECKS = {"compare": check_compare, "gap_shrinks": check_gap_shrinks, "ordering": check_ordering,
          "plateau": check_plateau, "spread": check_spread}


def evaluate_claims(S, cells, hp_cols, claims: list[dict]) -> list[dict]:
    outputs = dict(zip(cells["dir"], cells["outputs"])) if len(cells) else {}
    metrics = S.groupby("task")["metric"].agg(set).to_dict() if len(S) else {}
    make = lambda row, suffix: system(row, outputs, metrics, suffix)  # noqa: E731
    out = []
    for claim in claims:
        if "margin" not in claim["check"]:
            raise BenchError(f"claim {claim.get('id')} in {CLAIMS} declares no margin: add `margin: <points>` to "
                             "its check (the practical difference that decides it; see the file's header)")
        if claim["check"]["kind"] in OWN_CHECKS:  # decided on the records' curves / retention, not the summary
            verdict, lines, short, gone = OWN_CHECKS[claim["check"]["kind"]](cells, claim["check"])
            out.append({**claim, "verdict": verdict, "ours": lines, "short": short, "missing": gone})
            continue
        comparisons, notes, gone, failed = CHECKS[claim["check"]["kind"]](S, cells, hp_cols, claim["check"])
        verdict, lines, short = decide(comparisons, make, failed)
        out.append({**claim, "verdict": verdict, "ours": lines + notes, "short": short, "missing": gone})
    return out


HEADLINE_START, HEADLINE_END = "<!-- study claims: start (python -m bench report study) -->", \
    "<!-- study claims: end -->"


def headline_md(results: list[dict], claims_link: str = "claims.md") -> str:
    """One row per claim: the paper's number (version, table), ours (the comparison that decides the verdict: the
    two sides' means [95% intervals] (n = seeds), the difference's interval, models, seeds × examples), verdict."""
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ").strip()
    def absent(r: dict) -> str:  # a claim without comparisons: why this machine cannot run it, or what is missing
        parts = sorted(set(re.findall(r"results/([^/]+)/", " ".join(r["missing"]))))
        return r.get("not_here") or (f"not run yet: {', '.join(parts)} lack(s) its cells" if parts
                                     else "; ".join(r["missing"])[:200] or "–")
    rows = [f"| [{r['id']}]({claims_link}#{r['id']}) | {cell(r.get('headline', '–'))} | "
            f"{cell(r.get('short') or absent(r))} | **{r['verdict']}** |" for r in results]
    return "\n".join(["| claim | paper | ours | verdict |", "|---|---|---|---|", *rows]) + "\n"


def readme_with_headline(readme: str, table: str) -> str:
    """README.md with the block between the study-claims markers replaced by `table`."""
    if HEADLINE_START not in readme or HEADLINE_END not in readme:
        raise BenchError(f"README.md has no study-claims block: add the lines {HEADLINE_START} and {HEADLINE_END} "
                         "where the table goes")
    head, rest = readme.split(HEADLINE_START, 1)
    return head + HEADLINE_START + "\n" + table + HEADLINE_END + rest.split(HEADLINE_END, 1)[1]


def claims_md(grid: str, results: list[dict]) -> str:
    def paper(p):
        return "<br>".join(f"{k}: {v}" for k, v in p.items()) if isinstance(p, dict) else str(p).strip()
    lines = [f"# Claims: grid `{grid}`", "", "Checks are declared in `config/claims.yaml`; kinds: "
             + ", ".join([*CHECKS, *OWN_CHECKS]) + ". Each claim is decided on the difference it names, paired on the same eval "
             "examples and pooled over seeds: its 95% bootstrap interval (seeds and examples resampled; with k "
             "comparisons in one claim, each at 1 − 0.05/k, Bonferroni) must lie wholly beyond the claim's margin "
             "on the claim's side (**reproduced**) or wholly on the other side (**contradicted**); otherwise "
             "**inconclusive**, with the seeds or examples that would about decide it at the observed spread. "
             "A claim whose cells are absent is *not run*; records without per-example outputs cannot be paired "
             "(inconclusive). Our numbers: mean [95% interval] (n = seeds); † = stale (README.md: Stale cells).", "",
             "| claim | source | verdict |", "|---|---|---|"]
    lines += [f"| [{r['id']}](#{r['id']}) | {r['source']} | **{r['verdict']}** |" for r in results]
    for r in results:
        lines += ["", f"## {r['id']}", "", f"{r['statement'].strip()} — *{r['source']}*", "",
                  f"**Verdict: {r['verdict']}**", "", f"Check: `{json.dumps(r['check'])}`", "",
                  "| paper | ours |", "|---|---|",
                  f"| {paper(r.get('paper', '–'))} | {'<br>'.join(r['ours']) or '–'} |"]
        if r["missing"]:
            lines += ["", ("Missing: " if r["verdict"] == "not run" else "Not compared: ") + "; ".join(r["missing"])]
    return "\n".join(lines) + "\n"
