"""config/claims.yaml -> verdicts (reports/<grid>/claims.md): each claim a stated test on paired intervals.

Each check turns a claim into comparisons: a weighted sum of summary rows' scores (left − right; a gap's change; a
shift's drop against another's; one prompt length's gain over another) that the claim puts on one side of its
margin. Each comparison gets an interval over seeds and over the *same* eval examples for every row in it
(bench/report/stats.py); bench/report/verdicts.py turns intervals into verdicts under the claim's `hypothesis`
(superiority, non-inferiority, equivalence) and one-sided `alpha`, after the learning gate. A claim's `regime`
(train sizes, model sizes it speaks of) leaves out cells outside it; a claim with none left is not decided.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.api.errors import BenchError
from bench.report.curves import check_retention, check_time_to_fraction
from bench.report.power import claim_plans
from bench.report.stats import interval
from bench.report.summary import KEYS, _num, system
from bench.report.tables import fmt, human
from bench.report.templates import spread_comparisons
from bench.report.verdicts import ALPHA, HYPOTHESES, Comparison, Gate, decide, deciding, test_line, verdict_of

CLAIMS = Path(__file__).resolve().parents[2] / "config" / "claims.yaml"
ALIGN = ["grid", "task", "model", "train_size", "eval_set", "metric"]  # grid: a grid of parts pairs within a part


# ------------------------------------------------------------------ claims (config/claims.yaml)
SIDE = {">=": 1, ">": 1, "<=": -1, "<": -1}  # the claim's side of the margin: above or below
NOT_DECIDED = "not decided: "  # a check's missing-cells line that makes its claim not decided, not "not run"


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
    same = [k for k in on if k != "grid"] + [
        f"{k}{s}" for k in ("method", "hp", "seed_list", "values") for s in ("_l", "_r")
    ]
    key = P[same].astype(str).agg("|".join, axis=1)
    repeat = key.duplicated()
    first = dict(zip(key[~repeat], P.loc[~repeat, "grid"]))
    shown = [k for k in _varying(P, on) if k != "grid"]
    notes = []
    for k, r in zip(key[repeat], P[repeat].to_dict("records")):
        setting = " ".join(f"{c}={r[c]}" for c in shown) or "all"
        notes.append(
            f"{setting}: {r['grid']} ran the same cells as {first[k]} (same hyperparameters, seeds and "
            "scores): counted once"
        )
    return P[~repeat], notes


@dataclass(frozen=True)
class ClaimKind:
    """One kind of check a claim in config/claims.yaml names (`check.kind`): defined once, by `claim_kind`."""

    name: str
    check: Callable  # (Claim, the claim's check) -> (comparisons, notes, missing cells, a failed condition)
    reads_summary: bool = True  # False: decided on the records (curves, retention), not on the summary's rows


CLAIM_KINDS: dict[str, ClaimKind] = {}  # in the order the claims page lists them


def claim_kind(name: str, reads_summary: bool = True):
    """Register the decorated check as claim kind `name`."""

    def register(check: Callable) -> Callable:
        CLAIM_KINDS[name] = ClaimKind(name, check, reads_summary)
        return check

    return register


def _margin(c: dict, metric: str | None = None) -> float:
    """A claim's margin (>= 0, in the metric's units): one number, or per metric (`{nist: 0.1, cider: 0.05,
    default: 1.0}`) where a claim compares metrics printed on different scales (NIST and CIDEr raw, the others
    ×100)."""
    margin = c["margin"]
    return float(margin.get(metric, margin["default"]) if isinstance(margin, dict) else margin)


class Claim:
    """What a claim's checks need: the summary, the cells, the hp columns and how to build a row's system."""

    def __init__(self, S, cells, hp_cols, make_system):
        self.S, self.cells, self.hp_cols, self.make_system = S, cells, hp_cols, make_system

    def comparison(self, label, rows, weights, margin, side, text) -> Comparison:
        """A comparison of summary rows whose interval is their weighted sum's (bench.report.stats.interval)."""
        return Comparison(
            label,
            rows,
            margin,
            side,
            text,
            lambda: interval([self.make_system(r, s) for r, s in rows], weights),
            weights=weights,
        )


def _named(r: dict, suffix: str, c: dict) -> str:
    """A side's variant, and where both sides are one variant what tells them apart (e.g. the metric read)."""
    if r["variant_l"] != r["variant_r"]:
        return r[f"variant{suffix}"]
    own, other = (c["left"], c["right"]) if suffix == "_l" else (c["right"], c["left"])
    differ = [v if k == "metric" else f"{k}={v}" for k, v in own.items() if other.get(k) != v]
    return f"{r[f'variant{suffix}']} ({', '.join(map(str, differ))})" if differ else r[f"variant{suffix}"]


def _setting(r: dict, keys: list[str]) -> str:
    return " ".join(str(r[k]) for k in keys) or "all"


@claim_kind("compare")
def check_compare(claim: Claim, c: dict):
    P, on, gone = _pairs(claim.S, claim.cells, c)
    if gone:
        return [], [], gone, ""
    P, repeats = _once(P, on)
    side, keys = SIDE[c.get("op", ">=")], _varying(P, on)
    pairs = P.to_dict("records")
    texts = [f"{_named(r, '_l', c)} {fmt(_side(r, '_l'))} vs {_named(r, '_r', c)} {fmt(_side(r, '_r'))}" for r in pairs]
    each = [
        claim.comparison(
            _setting(r, keys),
            [(r, "_l"), (r, "_r")],
            [1, -1],
            _margin(c, r.get("metric", r.get("metric_l"))),
            side,
            text,
        )  # left's metric
        for r, text in zip(pairs, texts)
    ]
    comparisons = _pooled(claim, each, pairs, keys) if c.get("reduce") == "mean" else each
    notes, failed = repeats, ""
    if "trainable_pct_below" in c:
        pct = P["trainable_pct_l"].max()
        notes.append(f"left trainable % (max): {pct:.3f} (claim: < {c['trainable_pct_below']})")
        if pct >= c["trainable_pct_below"]:
            failed = f"left trains {pct:.3f}% of the parameters, not under {c['trainable_pct_below']}%"
    return comparisons, notes, [], failed


def _pooled(claim: Claim, each: list[Comparison], pairs: list[dict], keys: list[str]) -> list[Comparison]:
    """reduce: mean. Comparisons within one setting (same task/model/train size/eval set/metric/part; e.g. the
    pattern models PET's final model is compared with) average into one difference; settings pool by random
    effects (bench.report.verdicts.pooled)."""
    setting_keys = [k for k in keys if k not in ("variant_l", "variant_r")]
    by_setting: dict[str, list[Comparison]] = {}
    for r, comp in zip(pairs, each):
        by_setting.setdefault(_setting(r, setting_keys), []).append(comp)
    settings = []
    for label, members in by_setting.items():
        m = len(members)
        settings.append(
            claim.comparison(
                label,
                [x for comp in members for x in comp.rows],
                [w / m for comp in members for w in comp.weights],
                members[0].margin,
                members[0].side,
                "; ".join(comp.text for comp in members),
            )
        )
    return [
        Comparison(
            f"mean over {len(settings)} setting(s)",
            [x for s in settings for x in s.rows],
            settings[0].margin,
            settings[0].side,
            " | ".join(f"{s.label}: {s.text}" for s in settings),
            None,
            settings,
        )
    ]


@claim_kind("shift_drop")
def check_shift_drop(claim: Claim, c: dict):
    """Robustness to a shift as the paper means it: left's change from in-domain to the shifted eval set minus
    right's ((L_shift − L_in) − (R_shift − R_in)), per shifted eval set; reduce: mean pools them (random effects)."""
    where = c.get("where", {})
    shifted = {**where, "in_domain": False}
    P, on, gone = _pairs(claim.S, claim.cells, {**c, "where": shifted})
    if gone:
        return [], [], gone, ""
    P, repeats = _once(P, on)
    home = {k: v for k, v in where.items() if k != "in_domain"}
    Lin, Rin = (select(claim.S, {**home, **c[s]}) for s in ("left", "right"))
    base = [k for k in on if k not in ("eval_set",)]
    index = {
        side: {tuple(str(r[k]) for k in base): r for r in T.to_dict("records")}
        for side, T in (("_l", Lin), ("_r", Rin))
    }
    side, keys = SIDE[c.get("op", ">=")], _varying(P, on)
    each, pairs, lost = [], [], []
    for r in P.to_dict("records"):
        key = tuple(str(r[k]) for k in base)
        li, ri = index["_l"].get(key), index["_r"].get(key)
        if li is None or ri is None:
            lost.append(f"{_setting(r, keys)}: no in-domain row for a side")
            continue
        rows = [(r, "_l"), (li, ""), (r, "_r"), (ri, "")]
        drop_l, drop_r = r["mean_l"] - li["mean"], r["mean_r"] - ri["mean"]
        text = (
            f"{r['variant_l']} {li['mean']:.1f} → {r['mean_l']:.1f} ({drop_l:+.1f}) vs {r['variant_r']} "
            f"{ri['mean']:.1f} → {r['mean_r']:.1f} ({drop_r:+.1f})"
        )
        each.append(claim.comparison(_setting(r, keys), rows, [1, -1, -1, 1], _margin(c, r["metric"]), side, text))
        pairs.append(r)
    if not each:
        return [], repeats, lost or ["no shifted pair with both in-domain rows"], ""
    comparisons = _pooled(claim, each, pairs, keys) if c.get("reduce") == "mean" else each
    return comparisons, repeats + lost, [], ""


@claim_kind("gap_shrinks")
def check_gap_shrinks(claim: Claim, c: dict):
    """The gap (left − right) at the smallest model minus the gap at the largest (and, strict, between every two
    consecutive sizes) is above the margin; with `ladders` (lists of one family's models), only within a family."""
    P, on, gone = _pairs(claim.S, claim.cells, c)
    comparisons, notes, by = [], [], [k for k in on if k != "model"] + ["variant_l", "variant_r"]
    family = {m: i for i, ladder in enumerate(c.get("ladders") or []) for m in ladder}
    mixed = []  # the grid's ladders that mix families
    for _, g in P.groupby(by, sort=False) if not gone else []:
        label = " ".join(str(g[k].iloc[0]) for k in _varying(P, by)) or "all"
        sizes = g.sort_values("model_params_l").groupby("model", sort=False)
        rows = {model: m.to_dict("records") for model, m in sizes}
        gaps = {m: sum(r["mean_l"] - r["mean_r"] for r in rows[m]) / len(rows[m]) for m in rows}
        shown = ", ".join(f"{m} ({human(rows[m][0]['model_params_l'])}) {gaps[m]:+.1f}" for m in rows)
        ladders = [[m for m in rows if family.get(m) == f] for f in sorted({family[m] for m in rows if m in family})]
        ladders = [ladder for ladder in ladders if len(ladder) >= 2] if "ladders" in c else [list(rows)]
        if not ladders and len(rows) < 2:
            notes.append(f"{label}: one model size ({shown}): no ladder")
            continue
        if not ladders:
            notes.append(f"{label}: gap by size {shown} — a mixed-family ladder (secondary view, not evidence)")
            mixed.append(" → ".join(rows))
            continue
        notes.append(f"{label}: gap by size {shown}")
        for models in ladders:
            steps = list(zip(models, models[1:])) if c.get("strict") else [(models[0], models[-1])]
            for small, large in steps:
                parts = [
                    (r, s, w / len(rows[m]))
                    for m, sign in ((small, 1), (large, -1))
                    for r in rows[m]
                    for s, w in (("_l", sign), ("_r", -sign))
                ]
                comparisons.append(
                    claim.comparison(
                        f"{label}: gap {small} − gap {large}",
                        [(r, s) for r, s, _ in parts],
                        [w for *_, w in parts],
                        _margin(c),
                        SIDE[c.get("op", ">")],
                        f"{gaps[small]:+.1f} − {gaps[large]:+.1f}",
                    )
                )
    if mixed and not comparisons:
        gone.append(
            f"{NOT_DECIDED}no one-family ladder of ≥ 2 sizes in the grid (claims.yaml `ladders`); its "
            f"ladders mix families: {'; '.join(dict.fromkeys(mixed))}"
        )
    return comparisons, notes, gone, ""


def _groups(claim: Claim, c: dict):
    """Per group of otherwise equal rows: its label and its rows by the value of `by`."""
    by, hp_cols = c["by"], claim.hp_cols
    T = select(claim.S, c.get("where", {}), by)
    if T.empty:
        return [], [missing(claim.cells, c.get("where", {}))]
    if by not in T:  # a hyperparameter that does not vary in this grid: one value, read from `hp`
        T = T.assign(**{by: _values(T, by).astype(str)})
    on = [k for k in ALIGN + ["method"] + hp_cols if k != by and (k not in hp_cols or (T[k] != "").all())]
    keys = _varying(T, on)
    return [
        (
            " ".join(f"{k}={g[k].iloc[0]}" if k in hp_cols else str(g[k].iloc[0]) for k in keys) or "all",
            {str(v): rows.to_dict("records") for v, rows in g.groupby(by)},
        )
        for _, g in T.groupby(on, sort=False)
    ], []


def _step(claim, label, by, a, b, rows, margin, side) -> Comparison:
    """score(by=a) − score(by=b) beyond margin on side; several rows per value: their mean."""
    ra, rb = rows[a], rows[b]
    mean = lambda rs: sum(r["mean"] for r in rs) / len(rs)  # noqa: E731
    return claim.comparison(
        f"{label}: {by}={a} − {by}={b}",
        [(r, "") for r in ra + rb],
        [1 / len(ra)] * len(ra) + [-1 / len(rb)] * len(rb),
        margin,
        side,
        f"{by}={a} {mean(ra):.1f} vs {by}={b} {mean(rb):.1f}",
    )


@claim_kind("ordering")
def check_ordering(claim: Claim, c: dict):
    groups, gone = _groups(claim, c)
    comparisons = []
    for label, rows in groups:
        order = c["order"]
        if order in ("increasing", "decreasing"):
            order = sorted(rows, key=_num, reverse=order == "increasing")
        order = [str(v) for v in order]
        if not set(order) <= set(rows) or len(order) < 2:
            gone.append(f"{label}: needs {c['by']} ∈ {order}, has {sorted(rows, key=_num)}")
            continue
        comparisons += [_step(claim, label, c["by"], a, b, rows, _margin(c), 1) for a, b in zip(order, order[1:])]
    return comparisons, [], gone, ""


@claim_kind("plateau")
def check_plateau(claim: Claim, c: dict):
    """Every value of `by` above `after` gains less than the margin over `after` (non-inferiority, side −1)."""
    groups, gone = _groups(claim, c)
    comparisons, after = [], float(c["after"])
    for label, rows in groups:
        xs = {_num(v)[1]: v for v in rows if _num(v)[0] == 0}
        if after not in xs or not any(x > after for x in xs):
            gone.append(f"{label}: needs {c['by']}={after:g} and a larger value, has {sorted(xs)}")
            continue
        comparisons += [
            _step(claim, label, c["by"], xs[x], xs[after], rows, _margin(c), -1) for x in sorted(xs) if x > after
        ]
    return comparisons, [], gone, ""


@claim_kind("spread")
def check_spread(claim: Claim, c: dict):
    """The spread of `left`'s scores across templates minus `right`'s (bench/report/templates.py) beyond the margin."""

    def comparison(label, rows, weights, text):
        from bench.report.templates import spread_interval

        return Comparison(
            label,
            rows,
            _margin(c),
            SIDE[c.get("op", ">=")],
            text,
            lambda: spread_interval([claim.make_system(r, s) for r, s in rows], weights),
        )

    comparisons, notes, gone, failed = spread_comparisons(claim.S, claim.cells, claim.hp_cols, c, comparison)
    return comparisons, notes, gone, ""


def _on_records(check: Callable) -> Callable:
    """A check of the records' curves or retention (bench/report/curves.py) as a claim kind's check."""

    def on_records(claim: Claim, c: dict):
        return (*check(claim.cells, c, _margin(c)), "")

    return on_records


claim_kind("time_to_fraction", reads_summary=False)(_on_records(check_time_to_fraction))
claim_kind("retention", reads_summary=False)(_on_records(check_retention))


def _checked(claim: dict) -> dict:
    """The claim's check, refused in one line where it does not state its test."""
    check, cid = claim["check"], claim.get("id")
    if check.get("kind") not in CLAIM_KINDS:
        raise BenchError(
            f"claim {cid} in {CLAIMS}: unknown check kind {check.get('kind')!r}: use one of {', '.join(CLAIM_KINDS)}"
        )
    if check.get("hypothesis") not in HYPOTHESES:
        raise BenchError(
            f"claim {cid} in {CLAIMS} declares no hypothesis: add `hypothesis:` "
            f"({' | '.join(HYPOTHESES)}) to its check (docs/statistics.md)"
        )
    if "margin" not in check:
        raise BenchError(
            f"claim {cid} in {CLAIMS} declares no margin: add `margin: <units>` (>= 0) to its check "
            "(the practical difference that decides it; see the file's header)"
        )
    margins = check["margin"].values() if isinstance(check["margin"], dict) else [check["margin"]]
    if any(not isinstance(m, (int, float)) or m < 0 for m in margins):
        raise BenchError(
            f"claim {cid} in {CLAIMS}: margin {check['margin']} must be >= 0 (the side is the op's and "
            "the hypothesis's): write e.g. `hypothesis: non_inferiority, margin: 1.0`"
        )
    return check


def in_regime(S: pd.DataFrame, regime: dict | None) -> tuple[pd.DataFrame, str]:
    """The summary rows inside a claim's regime (`train_size` / `model_params`: {min, max}; 'full' data counts as
    above any number), and what it left out."""
    if not regime or S.empty:
        return S, ""
    keep = pd.Series(True, index=S.index)
    for key in ("train_size", "model_params"):
        if key in regime:
            values = S[key].map(lambda v: _num(v)[1] if _num(v)[0] == 0 else math.inf)
            keep &= values >= regime[key].get("min", -math.inf)
            keep &= values <= regime[key].get("max", math.inf)
    out = S[~keep]
    said = f"outside its regime ({regime.get('reason', json.dumps(regime))})"
    if out.empty:
        return S, ""
    sizes = sorted({str(v) for v in out["train_size"]}, key=_num)
    return S[keep], f"{said}: left out train size(s) {', '.join(sizes)} ({len(out)} summary rows)"


def evaluate_claims(S, cells, hp_cols, claims: list[dict]) -> list[dict]:
    outputs = dict(zip(cells["dir"], cells["outputs"])) if len(cells) else {}
    metrics = S.groupby("task")["metric"].agg(set).to_dict() if len(S) else {}
    make = lambda row, suffix: system(row, outputs, metrics, suffix)  # noqa: E731
    gate = Gate(S, outputs)
    out = []
    for claim in claims:
        check = _checked(claim)
        hypothesis, alpha = check["hypothesis"], float(check.get("alpha", ALPHA))
        T, regime_note = in_regime(S, claim.get("regime"))
        kind = CLAIM_KINDS[check["kind"]]
        comparisons, notes, gone, failed = kind.check(Claim(T, cells, hp_cols, make), check)
        found = decide(comparisons, hypothesis, alpha, gate)
        verdict, why = verdict_of(found, failed)
        if (
            verdict == "not run"
            and regime_note
            and kind.reads_summary
            and kind.check(Claim(S, cells, hp_cols, make), check)[0]
        ):  # its cells ran, outside its regime
            verdict, why = "not decided", regime_note
        elif verdict == "not run" and any(g.startswith(NOT_DECIDED) for g in gone):
            verdict, why = "not decided", next(g for g in gone if g.startswith(NOT_DECIDED))[len(NOT_DECIDED) :]
        notes = ([regime_note] if regime_note else []) + notes
        lines = [_line(f, hypothesis, alpha, len(found)) for f in found]
        if claim.get("not_decided") and verdict != "not run":  # what the cells measure is not the paper's quantity
            verdict, why, lines = (
                "not decided",
                claim["not_decided"],
                [f"secondary view, not evidence — {x}" for x in lines],
            )
            found = []
        out.append(
            {
                **claim,
                "verdict": verdict,
                "why": why,
                "found": found,
                "test": test_line(hypothesis, _margin(check), SIDE.get(check.get("op", ">="), 1), alpha),
                "ours": lines + notes,
                "short": _short(found),
                "missing": gone,
            }
        )
    return out


def _line(f, hypothesis: str, alpha: float, k: int) -> str:
    c = f.comparison
    head = f"{c.label}: {c.text}"
    if f.interval is None:
        return f"{head} → **{f.verdict}**: {f.reason}"
    iv = f.interval
    level = 100 * (1 - 2 * alpha)
    bonferroni = f"; contradiction at α/{k} each" if k > 1 else ""
    return (
        f"{head}: Δ {iv.estimate:+.2f} [{iv.low:+.2f}, {iv.high:+.2f}] ({level:.0f}%; {iv.method}); "
        f"{test_line(hypothesis, c.margin, c.side, alpha)}{bonferroni} → **{f.verdict}**"
        + (f" ({f.reason})" if f.reason else "")
    )


def _short(found) -> str:
    """The deciding comparison in one line: Δ [interval] and what it read."""
    if not found:
        return ""
    f = deciding(found)
    if f.interval is None:
        return f"{f.comparison.label}: {f.reason}"[:200]
    iv = f.interval
    where = f" ({found.index(f) + 1} of {len(found)})" if len(found) > 1 else ""
    size = f"; {f.seeds} seeds × {f.examples} examples" if f.seeds else ""
    return f"Δ {iv.estimate:+.2f} [{iv.low:+.2f}, {iv.high:+.2f}]{where}: {f.comparison.label}{size}"


HEADLINE_START, HEADLINE_END = (
    "<!-- study claims: start (python -m bench report study) -->",
    "<!-- study claims: end -->",
)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def headline_md(results: list[dict], claims_link: str = "claims.md", before: dict | None = None) -> str:
    """One row per claim: the paper's number (version, table), the test, ours (the deciding comparison's Δ
    [95% interval]) and the verdict with its reason; `before`: claim id -> its verdict under the previous statistics."""

    def absent(r: dict) -> str:  # a claim without comparisons: why this machine cannot run it, or what is missing
        parts = sorted(set(re.findall(r"results/([^/]+)/", " ".join(r["missing"]))))
        return r.get("not_here") or (
            f"not run yet: {', '.join(parts)} lack(s) its cells" if parts else "; ".join(r["missing"])[:200] or "–"
        )

    rows = []
    for r in results:
        why = r.get("why") or ""
        why = f": {_cell(why if len(why) <= 140 else why[:139] + '…')}" if why else ""  # in full in claims.md
        was = f" | {before.get(r['id'], before.get(r.get('was', ''), '–'))}" if before else ""
        rows.append(
            f"| [{r['id']}]({claims_link}#{r['id']}) | {_cell(r.get('headline', '–'))} | {_cell(r['test'])} | "
            f"{_cell(r.get('short') or absent(r))}{was} | **{r['verdict']}**{why} |"
        )
    head = "| claim | paper | test | ours: Δ [95% interval] |" + (" before |" if before else "") + " verdict |"
    return "\n".join([head, "|---" * (5 + bool(before)) + "|", *rows]) + "\n"


CELL_CHARS = 80  # the README's claims table: no cell longer (details one link away, in claims.md)


def _clip(text: str, limit: int = CELL_CHARS) -> str:
    text = _cell(text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def slim_headline_md(results: list[dict], claims_link: str = "claims.md") -> str:
    """The README's claims table: claim | paper | ours: Δ [95% interval] | verdict | why, every cell at most
    CELL_CHARS characters of Markdown (claim names link to their section of claims.md by reference, the links
    listed below the table)."""
    from bench.report.verdicts import deciding

    rows, links = [], []
    for i, r in enumerate(results, 1):
        f = deciding(r["found"]) if r["found"] else None
        iv = f.interval if f is not None else None
        if iv is not None:
            unit = "" if f.comparison.unit == "points" else f" {f.comparison.unit}"
            size = f"; {f.seeds} seeds × {f.examples} ex." if f.seeds else ""
            ours = f"{iv.estimate:+.2f} [{iv.low:+.2f}, {iv.high:+.2f}]{unit}{size}"
        else:
            ours = "–"
        why = r.get("why") or (
            "" if r["verdict"] != "not run" else (r.get("not_here") or "its cells are not in the grid")
        )
        rows.append(
            f"| [{r['id']}][c{i}] | {_clip(r.get('headline', '–'))} | {_clip(ours)} | **{r['verdict']}** | "
            f"{_clip(why) or '–'} |"
        )
        links.append(f"[c{i}]: {claims_link}#{r['id']}")
    return (
        "\n".join(
            ["| claim | paper | ours: Δ [95% interval] | verdict | why |", "|---|---|---|---|---|", *rows, "", *links]
        )
        + "\n"
    )


def readme_with_headline(readme: str, table: str) -> str:
    """README.md with the block between the study-claims markers replaced by `table`."""
    if HEADLINE_START not in readme or HEADLINE_END not in readme:
        raise BenchError(
            f"README.md has no study-claims block: add the lines {HEADLINE_START} and {HEADLINE_END} "
            "where the table goes"
        )
    head, rest = readme.split(HEADLINE_START, 1)
    return head + HEADLINE_START + "\n" + table + HEADLINE_END + rest.split(HEADLINE_END, 1)[1]


def claims_md(grid: str, results: list[dict], before: dict | None = None) -> str:
    """The claims page; `before`: claim id -> its verdict under the previous statistics (reports/<grid>/
    verdicts-before.json), shown as before → after."""

    def paper(p):
        return "<br>".join(f"{k}: {v}" for k, v in p.items()) if isinstance(p, dict) else str(p).strip()

    counts = pd.Series([r["verdict"] for r in results]).value_counts()
    lines = [
        f"# Claims: grid `{grid}`",
        "",
        ", ".join(f"{n} {v}" for v, n in counts.items()) + f" of {len(results)} claims.",
        "",
        "Checks are declared in `config/claims.yaml`; kinds: " + ", ".join(CLAIM_KINDS) + ". Each "
        "claim states its test (superiority, non-inferiority or equivalence, with a margin in the metric's units "
        "and a one-sided α per comparison, 0.025 unless it says otherwise) on a difference paired on the same "
        "eval examples and pooled over seeds. Intervals: seeds (Student's t, seeds − 1 df) and eval examples "
        "as two levels, pooled settings by random effects (docs/statistics.md). **reproduced**: every "
        "comparison's one-sided bound clears the margin (intersection–union: no correction); "
        "**contradicted**: some comparison lies significantly on the other side (at α/k each, Bonferroni over "
        "k); **not decided**: a system did not learn (its in-domain score does not clear the majority class), "
        "the cells lie outside the claim's regime, or no one-family ladder exists; **inconclusive**: otherwise. "
        "`python -m bench power` plans what would decide each. Our numbers: mean [95% interval] (n = seeds); "
        "† = stale (README.md: Stale cells).",
        "",
        "| claim | source | verdict |" + (" before → after |" if before else ""),
        "|---|---|---|" + ("---|" if before else ""),
    ]
    for r in results:
        change = ""
        if before:
            old = before.get(r["id"], before.get(r.get("was", ""), "–"))
            change = f" {old} → {r['verdict']} |"
        lines.append(f"| [{r['id']}](#{r['id']}) | {r['source']} | **{r['verdict']}** |{change}")
    for r in results:
        quantity = r.get("quantity") or {}
        lines += [
            "",
            f"## {r['id']}",
            "",
            f"{r['statement'].strip()} — *{r['source']}*",
            "",
            f"**Verdict: {r['verdict']}**" + (f" — {r['why']}" if r.get("why") else ""),
            "",
            f"Test: {r['test']}. Check: `{json.dumps(r['check'])}`",
            "",
        ]
        if quantity:
            lines += [
                "| | quantity |",
                "|---|---|",
                f"| paper | {_cell(quantity.get('paper', '–'))} |",
                f"| ours | {_cell(quantity.get('ours', '–'))} |",
                "",
            ]
        lines += [
            "| paper | ours |",
            "|---|---|",
            f"| {paper(r.get('paper', '–'))} | {'<br>'.join(r['ours']) or '–'} |",
        ]
        if r["missing"]:
            lines += [
                "",
                ("Missing: " if r["verdict"] in ("not run", "not decided") else "Not compared: ")
                + "; ".join(r["missing"]),
            ]
        plans = claim_plans(r)
        if plans:
            lines += [
                "",
                "What would decide it (`python -m bench power`, 80% power):",
                "",
                *(f"- {label}: " + "; ".join(texts) for label, texts in plans),
            ]
    return "\n".join(lines) + "\n"
