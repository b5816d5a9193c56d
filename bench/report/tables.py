"""Summary -> tables (markdown and LaTeX): each table is a small function over the summary."""

from __future__ import annotations

import json
import math
import re
from collections import namedtuple

import pandas as pd

from bench.report.summary import COST, _num

GEN_METRICS = {
    "bleu": "BLEU",
    "nist": "NIST",
    "meteor": "METEOR",
    "rouge_1": "ROUGE-1",
    "rouge_2": "ROUGE-2",
    "rouge_l": "ROUGE-L",
    "cider": "CIDEr",
    "ter": "TER",
}
EVAL_SHORT = {"webnlg": "A", "test_seen": "S", "test_unseen": "U"}
ENSEMBLE = {"accuracy_avg_single": "average prompt", "accuracy_best_single": "best prompt", "accuracy": "ensemble"}
Table = namedtuple("Table", "title header rows note")


# ------------------------------------------------------------------ formatting
def human(n) -> str:
    if n is None or pd.isna(n):
        return "–"
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def fmt(r: dict | None) -> str:
    """mean [95% interval] (n=seeds), † when stale (other harness code, method files, model or lock)."""
    if r is None:
        return "–"
    digits = 2 if abs(r["mean"]) < 10 else 1
    low, high = r.get("ci_low", math.nan), r.get("ci_high", math.nan)
    interval = f" [{low:.{digits}f}, {high:.{digits}f}]" if not (pd.isna(low) or pd.isna(high)) else ""
    return f"{r['mean']:.{digits}f}{interval} (n={r['seeds']})" + (" †" if r["stale"] else "")


def pivot(T: pd.DataFrame, index: list[str], column: str, order: list, lead=None) -> list[list]:
    rows = []
    for key, g in T.groupby(index, sort=False):
        by = {r[column]: r for r in g.to_dict("records")}
        rows.append([*key, *(lead(g) if lead else []), *(fmt(by.get(c)) for c in order)])
    return rows


def _models(T: pd.DataFrame) -> dict:
    sizes = T.groupby("model")["model_params"].first().sort_values()
    return {m: f"{m} ({human(p)})" for m, p in sizes.items()}


def _in_domain(S: pd.DataFrame) -> pd.DataFrame:
    return S[S["primary"] & S["in_domain"]]


# ------------------------------------------------------------------ tables (each: summary -> list[Table])
def generation_tables(S):
    out = []
    for task, T in S[S["metric"].isin(list(GEN_METRICS))].groupby("task", sort=False):
        sets = list(dict.fromkeys(T["eval_set"]))
        label = lambda m, e: GEN_METRICS[m] + (f" {EVAL_SHORT.get(e, e)}" if len(sets) > 1 else "")  # noqa: E731
        T = T.assign(col=[label(m, e) for m, e in zip(T["metric"], T["eval_set"])])
        order = [c for c in dict.fromkeys(label(m, e) for m in GEN_METRICS for e in sets) if c in set(T["col"])]
        rows = pivot(
            T,
            ["model", "variant", "train_size"],
            "col",
            order,
            lead=lambda g: [human(g["trainable_params"].iloc[0]), f"{g['trainable_pct'].iloc[0]:.3f}"],
        )
        note = "S/U/A: seen / unseen categories / all." if "test_unseen" in sets else ""
        kind = "Summarization" if "rouge_1" in set(T["metric"]) else "Table-to-text"  # Li & Liang Table 3 vs Table 2
        out.append(
            Table(
                f"{kind}: {task}",
                ["model", "method", "train size", "trainable params", "trainable %", *order],
                rows,
                note,
            )
        )
    return out


def size_tables(S):
    T = _in_domain(S)[lambda d: d["metric"].isin(["accuracy", "f1"])]
    if T.empty:
        return []
    labels = _models(T)
    rows = pivot(T.assign(col=T["model"].map(labels)), ["task", "variant", "train_size"], "col", list(labels.values()))
    return [
        Table(
            "Classification accuracy by model size (in-domain)",
            ["task", "method", "train size", *labels.values()],
            rows,
            "Model size = the least total parameter count among the model's records.",
        )
    ]


def shift_tables(S, difference=None):
    """`difference(row, reference row)`: the paired interval of their difference (bench.report.stats.Interval), or
    None where it cannot be computed. A grid of parts: one table per part, each method against the part's own full FT
    (claims pair within a part too)."""
    out, parts = [], S["grid"].nunique() > 1
    for (task, part), T in S[S["primary"]].groupby(["task", "grid"], sort=False):
        if T["in_domain"].all():
            continue
        variants = list(dict.fromkeys(T["variant"]))
        full = list(dict.fromkeys(T.loc[T["method"] == "full_ft", "variant"]))
        ref = full[0] if len(full) == 1 else "full_ft" if "full_ft" in variants else None
        others = [v for v in variants if v != ref] if ref else []
        rows = []
        for (model, size, eval_set), g in T.groupby(["model", "train_size", "eval_set"], sort=False):
            by = {r["variant"]: r for r in g.to_dict("records")}
            deltas = [_delta(by[v], by[ref], difference) if v in by and ref in by else "–" for v in others]
            rows.append(
                [
                    model,
                    size,
                    eval_set + (" (in-domain)" if eval_set == task else ""),
                    *(fmt(by.get(v)) for v in variants),
                    *deltas,
                ]
            )
        out.append(
            Table(
                f"Domain shift: {task} ({T['metric'].iloc[0]})" + (f", {part}" if parts else ""),
                ["model", "train size", "eval set", *variants, *(f"Δ {v}" for v in others)],
                rows,
                f"Δ = method − {ref} (points) [95% interval of the difference, paired on the same eval examples]."
                if ref
                else "No full_ft cells: no Δ column.",
            )
        )
    return out


def _delta(row, ref, difference) -> str:
    interval = difference(row, ref) if difference else None
    spread = f" [{interval.low:+.1f}, {interval.high:+.1f}]" if interval else ""
    return f"{row['mean'] - ref['mean']:+.1f}{spread}"


def lowdata_tables(S):
    out = []
    for task, T in _in_domain(S).groupby("task", sort=False):
        sizes = sorted(set(T["train_size"]), key=_num)
        if len(sizes) >= 2:
            out.append(
                Table(
                    f"Low-data: {task} ({T['metric'].iloc[0]}) by training examples",
                    ["model", "method", *(f"n={s}" for s in sizes)],
                    pivot(T, ["model", "variant"], "train_size", sizes),
                    "",
                )
            )
    return out


def ablation_tables(S, hp_cols):
    out = []
    for task, T in _in_domain(S).groupby("task", sort=False) if hp_cols else []:
        varied = [m for m, g in T.groupby("method", sort=False) if len(g[hp_cols].drop_duplicates()) > 1]
        T = T[T["method"].isin(varied)]
        if len(T):
            labels = _models(T)
            rows = pivot(
                T.assign(col=T["model"].map(labels)), ["variant", *hp_cols, "train_size"], "col", list(labels.values())
            )
            out.append(
                Table(
                    f"Ablation: {task} ({T['metric'].iloc[0]}) by {', '.join(hp_cols)}",
                    ["method", *hp_cols, "train size", *labels.values()],
                    rows,
                    "",
                )
            )
    return out


def ensemble_tables(S):
    keys = ["task", "model", "variant", "train_size", "eval_set"]
    singles = S[S["metric"].isin(["accuracy_avg_single", "accuracy_best_single"])][keys].drop_duplicates()
    if singles.empty:
        return []
    T = S[S["metric"].isin(list(ENSEMBLE))].merge(singles, on=keys)
    return [
        Table(
            "Prompt ensembling",
            [*keys, *ENSEMBLE.values()],
            pivot(T, keys, "metric", list(ENSEMBLE)),
            "average / best: the single prompts' mean and best accuracy; ensemble: their majority vote.",
        )
    ]


def dev_selection_tables(S):
    """Where variants of one method differ only in lr and have `dev` scores (cells with dev_limit): per task x model
    x method (x its other hp) x train size, the lr with the best mean dev primary metric over seeds, with its test
    scores beside the best-on-test lr's. Sets S["selected_on_dev"] (only when S has dev rows) on the chosen rows."""
    if S.empty or not (S["eval_set"] == "dev").any():
        return []
    S["selected_on_dev"] = False
    hp = S["hp"].map(json.loads)
    rest = hp.map(lambda h: json.dumps({k: v for k, v in h.items() if k != "lr"}, sort_keys=True))
    P = S.assign(lr=hp.map(lambda h: h.get("lr")), rest=rest)[S["primary"]]
    out = []
    for task, T in P.groupby("task", sort=False):
        shifts = [e for e in dict.fromkeys(T["eval_set"]) if e not in ("dev", task)]
        rests = {m: [json.loads(r) for r in g["rest"].unique()] for m, g in T.groupby("method")}
        rows = []
        for (model, method, size, rest), g in T.groupby(["model", "method", "train_size", "rest"], sort=False):
            dev, test = g[g["eval_set"] == "dev"], g[g["eval_set"] == task]
            if dev["lr"].nunique() < 2:
                continue
            pick = dev.loc[dev["mean"].idxmax()]  # ties: the first in summary order (the smaller lr)
            best = test.loc[test["mean"].idxmax()].to_dict() if len(test) else None
            S.loc[
                (S["task"] == task)
                & (S["model"] == model)
                & (S["train_size"] == size)
                & (S["variant"] == pick["variant"]),
                "selected_on_dev",
            ] = True
            at = {r["eval_set"]: r for r in g[g["variant"] == pick["variant"]].to_dict("records")}
            family = rests[method]  # label a method's lr sweeps by the other hp that tell them apart
            others = sorted({k for r in family for k in r if len({json.dumps(x.get(k)) for x in family}) > 1})
            label = " ".join([method, *(f"{k}={json.loads(rest).get(k)}" for k in others)])
            rows.append(
                [
                    model,
                    label,
                    size,
                    pick["lr"],
                    fmt(pick),
                    fmt(at.get(task)),
                    *(fmt(at.get(e)) for e in shifts),
                    "–" if best is None else best["lr"],
                    fmt(best),
                ]
            )
        if rows:
            out.append(
                Table(
                    f"Learning rate selected on the dev split: {task} ({T['metric'].iloc[0]})",
                    [
                        "model",
                        "method",
                        "train size",
                        "lr (dev-selected)",
                        "dev",
                        f"{task} (in-domain test)",
                        *shifts,
                        "lr (best on test)",
                        f"{task} (best on test)",
                    ],
                    rows,
                    "dev-selected: the lr with the best mean dev score over seeds (dev = dev_limit examples "
                    "held out of the training split); its test and shifted scores are the fair result. "
                    "best on test: the lr with the best in-domain test score, i.e. selected on the test set "
                    "(optimistic), for contrast only.",
                )
            )
    return out


def cost_tables(S, hp_cols):
    R = S.drop_duplicates(["task", "model", "variant", "train_size"])  # cost: one per record, not per eval set
    cols = [c for c in COST + ["trainable_pct", "model_params"] if c in R]
    G = R.groupby(["task", "model", "variant"], sort=False)[cols].mean().reset_index()
    flops = "flops_per_step" in G and G["flops_per_step"].notna().any()
    rows = [
        [
            r["task"],
            r["model"],
            r["variant"],
            human(r["trainable_params"]),
            f"{r['trainable_pct']:.3f}",
            human(r["delta_params"]),
            f"{r['delta_bytes'] / 2**20:.2f}",
            f"{r['peak_mem_bytes'] / 2**30:.2f}",
            f"{r['train_tokens_per_s']:.0f}",
            f"{r['eval_tokens_per_s']:.0f}",
            *([human(r["flops_per_step"])] if flops else []),
        ]
        for r in G.to_dict("records")
    ]
    return [
        Table(
            "Cost",
            [
                "task",
                "model",
                "method",
                "trainable params",
                "trainable %",
                "delta params",
                "delta MB",
                "peak mem GB",
                "train tok/s",
                "eval tok/s",
                *(["FLOPs/step"] if flops else []),
            ],
            rows,
            "Means over train sizes and seeds. Peak memory: process peak RSS on CPU, max allocated on CUDA. "
            "Delta params < trainable params where training uses a reparametrisation (prefix tuning's MLP).",
        )
    ]


def interval_tables(S):
    """How wide a row's 95% interval typically is, per task, eval set and primary metric: what a difference must
    exceed to be told from noise at these seeds and eval sizes (a paired difference's interval is usually narrower:
    both sides share the examples)."""
    T = S[S["primary"] & S["ci_low"].notna()].assign(width=lambda t: t["ci_high"] - t["ci_low"])
    if T.empty:
        return []
    G = (
        T.groupby(["task", "eval_set", "metric"], sort=False)
        .agg(
            rows=("width", "size"),
            median=("width", "median"),
            low=("width", "min"),
            high=("width", "max"),
            seeds=("seeds", "median"),
            examples=("examples", "median"),
        )
        .reset_index()
    )
    rows = [
        [
            r["task"],
            r["eval_set"],
            GEN_METRICS.get(r["metric"], r["metric"]),
            r["rows"],
            f"{r['seeds']:g}",
            f"{r['examples']:g}",
            f"{r['median']:.1f}",
            f"{r['low']:.1f}–{r['high']:.1f}",
        ]
        for r in G.to_dict("records")
    ]
    return [
        Table(
            "Interval widths",
            ["task", "eval set", "metric", "rows", "seeds", "examples per seed", "median width", "range"],
            rows,
            "Width (high − low) of each summary row's 95% interval, in the metric's points.",
        )
    ]


NEIGHBOUR_ROWS = 10  # prompt rows listed per cell in the nearest-token table


def _token(text: str) -> str:
    """A decoded vocabulary token, readable in a table cell: spaces as ▁ (" good" and "good" are two tokens),
    whitespace-only or unprintable ones as their repr, no pipes."""
    shown = text.replace(" ", "▁") if text.strip() else repr(text)
    return (shown if shown.isprintable() else repr(text)).replace("|", "¦")


def interpretability_tables(cells: pd.DataFrame) -> list[Table]:
    """Lester et al. §7 from the records' `analysis.prompt_neighbours` (methods/prompt_tuning.py), as `load` keeps
    it."""
    found = [
        (c, c["analysis"]["prompt_neighbours"])
        for c in cells.to_dict("records")
        if "prompt_neighbours" in (c["analysis"] or {})
    ]
    if not found:
        return []
    keys = ["task", "model", "variant", "train_size"]
    frame = pd.DataFrame(
        [
            {
                **{k: c[k] for k in keys},
                "seed": c["seed"],
                "rows": len(n["tokens"]),
                "label": n["rows_with_label_word"],
                "task_words": n["rows_with_task_word"],
                "top1": sum(row[0] for row in n["cosine"]) / len(n["cosine"]),
            }
            for c, n in found
        ]
    )
    G = (
        frame.groupby(keys, sort=False)
        .agg(
            seeds=("seed", "nunique"),
            rows=("rows", "first"),
            label=("label", "mean"),
            task_words=("task_words", "mean"),
            top1=("top1", "mean"),
        )
        .reset_index()
    )
    summary = [
        [
            *(r[k] for k in keys),
            r["seeds"],
            r["rows"],
            f"{r['label']:g} ({100 * r['label'] / r['rows']:.0f}%)",
            f"{r['task_words']:g} ({100 * r['task_words'] / r['rows']:.0f}%)",
            f"{r['top1']:.3f}",
        ]
        for r in G.to_dict("records")
    ]
    first = found[0][1]
    note = (
        f"Each learned prompt token's {first['k']} nearest vocabulary tokens by cosine similarity to the input "
        "embeddings; counted are prompt tokens with a label word (the verbalizer: "
        f"{', '.join(first['label_words']) or 'none'}) or a task word (a word of the task's prompt template: "
        f"{', '.join(first['task_words']) or 'none'}) among them, as whole tokens, case-insensitive; means over "
        "seeds. Top-1 cosine: mean over prompt tokens of the nearest token's similarity."
    )
    listing = []
    for c, n in sorted(found, key=lambda item: item[0]["seed"]):
        if any(row[:4] == [c[k] for k in keys] for row in listing):
            continue  # one seed per cell: the lowest
        listing += [
            [*(c[k] for k in keys), c["seed"], i, " · ".join(_token(t) for t in tokens), f"{cosine[0]:.3f}"]
            for i, (tokens, cosine) in enumerate(zip(n["tokens"][:NEIGHBOUR_ROWS], n["cosine"]))
        ]
    return [
        Table(
            "Soft-prompt interpretability (Lester §7)",
            [*keys, "seeds", "prompt tokens", "with a label word", "with a task word", "top-1 cosine"],
            summary,
            note,
        ),
        Table(
            f"Nearest vocabulary tokens of the first {NEIGHBOUR_ROWS} prompt tokens",
            [*keys, "seed", "prompt token", f"nearest {first['k']} (most similar first)", "top-1 cosine"],
            listing,
            "",
        ),
    ]


def md_table(t: Table) -> str:
    lines = [f"### {t.title}", "", "| " + " | ".join(t.header) + " |", "|" + "---|" * len(t.header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines + ([f"\n{t.note}"] if t.note else []) + [""])


TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "_": r"\_",
    "#": r"\#",
    "{": r"\{",
    "}": r"\}",
    "$": r"\$",
    "^": r"\^{}",
    "~": r"\~{}",
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
    "†": r"$^\dagger$",
    "–": "--",
    "−": "-",
}


def tex_table(t: Table) -> str:
    def esc(text):  # one pass: a replacement is never escaped again
        return re.sub("|".join(map(re.escape, TEX)), lambda match: TEX[match.group()], str(text))

    body = [" & ".join(esc(c) for c in row) + r" \\" for row in t.rows]
    return "\n".join(
        [
            r"\begin{table}[t]",
            r"\centering\small",
            r"\begin{tabular}{" + "l" * len(t.header) + "}",
            r"\toprule",
            " & ".join(esc(h) for h in t.header) + r" \\",
            r"\midrule",
            *body,
            r"\bottomrule",
            r"\end{tabular}",
            r"\caption{" + esc(t.title + (". " + t.note if t.note else "")) + "}",
            r"\end{table}",
            "",
        ]
    )
