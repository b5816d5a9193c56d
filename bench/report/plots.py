"""Figures from the summary table (bench/report/write.py), PNG via matplotlib's Agg backend.

One figure per task and kind, written only when the summary has the data for it: score vs model size and
score vs training examples (line plots, log x, at least 2 x values), in-domain vs shifted eval sets (grouped
bars), and score vs cost (peak memory, trainable parameters) with the Pareto front. Every point or bar has its
95% interval as error bars (none where the summary has none); every method variant has its own colour and marker
(bars: colour and hatch) in every figure; in the Pareto plot the marker's size tells the models apart. Files are
named `<kind>-<task>.png` (the Snakefile's report() patterns rely on it).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from bench.report.summary import _num  # noqa: E402
from bench.report.tables import human  # noqa: E402

UNITS = {"accuracy": "accuracy (%)", "f1": "F1 (×100)", "bleu": "BLEU (0–100)", "rouge_l": "ROUGE-L F (×100)",
         "rouge_1": "ROUGE-1 F (×100)"}


COLORS = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 7]  # tab10 less its grey (the model legend's)
MARKERS = "osD^vP*Xph<>"
HATCHES = ["", "//", "..", "xx", "\\\\", "oo", "++", "--", "**", "||", "OO", "//.."]  # bars: the marker's counterpart


def _styles(T) -> dict:
    """Per method variant a (colour, marker) pair no other variant of the summary has: 9 colours x 12 markers."""
    return {v: (COLORS[i % len(COLORS)], MARKERS[i % len(MARKERS)])
            for i, v in enumerate(dict.fromkeys(T["variant"]))}


def _yerr(D):
    """Error bars from the 95% interval (bench/report/stats.py); none where a row has no interval."""
    if "ci_low" not in D:
        return None
    return np.array([D["mean"] - D["ci_low"], D["ci_high"] - D["mean"]], dtype=float)


def _save(fig, ax, path: Path, title: str, xlabel: str, ylabel: str, D=None) -> Path:
    """`D`: the rows drawn; a figure none of whose rows has an interval says why it has no error bars."""
    if D is not None and ("ci_low" not in D or D["ci_low"].isna().all()):
        fig.text(0.99, 0.01, "no error bars: one seed and no per-example outputs", ha="right", fontsize=7)
    for a in np.atleast_1d(ax):
        a.grid(True, alpha=0.3)
        a.set_axisbelow(True)
        a.set_ylabel(ylabel)
    if np.atleast_1d(ax)[0].get_legend() is None:
        np.atleast_1d(ax)[0].legend(fontsize=8)
    if xlabel:
        for a in np.atleast_1d(ax):
            a.set_xlabel(xlabel)
    fig.suptitle(title)
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.13, top=0.88, wspace=0.08)  # fixed: tight_layout is slow
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _lines(ax, D, x, styles, tick=human):
    """One line per method variant (error bars: 95% intervals); log x with ticks at the data."""
    for variant, g in D.groupby("variant", sort=False):
        g = g.sort_values(x)
        color, marker = styles[variant]
        ax.errorbar(g[x], g["mean"], yerr=_yerr(g), marker=marker, capsize=3, label=variant, color=color)
    ax.set_xscale("log")
    xs = sorted(set(D[x]))
    ax.set_xticks(xs, [tick(v) for v in xs])
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_size(T, task, out: Path):
    size = max(T["train_size"], key=_num)
    D = T[T["in_domain"] & (T["train_size"] == size)]
    if D["model_params"].nunique() < 2:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    _lines(ax, D, "model_params", _styles(T))
    return _save(fig, ax, out / f"size-{task}.png", f"{task}: score vs model size (train size {size})",
                 "model size (parameters, log scale)", UNITS.get(D["metric"].iloc[0], D["metric"].iloc[0]), D)


def plot_data(T, task, out: Path):
    model = T.loc[T["model_params"].idxmax(), "model"]
    D = T[T["in_domain"] & (T["model"] == model) & T["train_size"].str.isdigit()]
    if D["train_size"].nunique() < 2:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    _lines(ax, D.assign(n=D["train_size"].astype(int)), "n", _styles(T), tick=lambda v: f"{v:g}")
    return _save(fig, ax, out / f"trainsize-{task}.png", f"{task}: score vs training examples ({model})",
                 "training examples (log scale)", UNITS.get(D["metric"].iloc[0], D["metric"].iloc[0]), D)


def plot_shift(T, task, out: Path):
    model, size = T.loc[T["model_params"].idxmax(), "model"], max(T["train_size"], key=_num)
    D = T[(T["model"] == model) & (T["train_size"] == size)]
    if D["in_domain"].all():
        return None
    sets, styles = list(dict.fromkeys(D["eval_set"])), _styles(T)
    variants = list(dict.fromkeys(D["variant"]))
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(max(6.4, 1.6 * len(sets)), 4.2))
    for i, variant in enumerate(variants):
        by = D[D["variant"] == variant].set_index("eval_set")
        xs = [j for j, s in enumerate(sets) if s in by.index]
        color, marker = styles[variant]
        ax.bar([x + (i - (len(variants) - 1) / 2) * width for x in xs], [by.loc[sets[x], "mean"] for x in xs], width,
               yerr=_yerr(by.loc[[sets[x] for x in xs]]), capsize=3, label=variant, color=color,
               hatch=HATCHES[MARKERS.index(marker) % len(HATCHES)], edgecolor="white")
    ax.set_xticks(range(len(sets)), [s + (" (in-domain)" if s == task else "") for s in sets])
    top = D["ci_high"].fillna(D["mean"]) if "ci_high" in D else D["mean"]
    ax.set_ylim(0, top.max() * (1.15 + 0.07 * ((len(variants) + 2) // 3)))  # legend room
    ax.legend(fontsize=8, loc="upper center", ncol=min(3, len(variants)))
    return _save(fig, ax, out / f"shift-{task}.png", f"{task}: in-domain vs shifted eval sets ({model}, n={size})",
                 "eval set", UNITS.get(D["metric"].iloc[0], D["metric"].iloc[0]), D)


def _front(x, y):
    """Points no other point beats on both axes (less cost, more score), in cost order."""
    order, best, keep = np.lexsort((-y, x)), -np.inf, []  # by cost, then best score first among equal costs
    for i in order:
        if y[i] > best:
            keep.append(i)
            best = y[i]
    return x[keep], y[keep]


def plot_pareto(T, task, out: Path):
    size = max(T["train_size"], key=_num)
    D = T[T["in_domain"] & (T["train_size"] == size)]
    if len(D) < 2:
        return None
    styles = _styles(T)
    models = list(D.sort_values("model_params")["model"].unique())
    sizes = {m: 30 + 50 * i for i, m in enumerate(models)}  # marker area by model: the markers name the method
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for ax, col, scale, label in ((axes[0], "peak_mem_bytes", 2**30, "peak memory (GB)"),
                                  (axes[1], "trainable_params", 1, "trainable parameters (log scale)")):
        P = D[D[col] > 0]
        for r in P.to_dict("records"):
            color, marker = styles[r["variant"]]
            ax.errorbar(r[col] / scale, r["mean"], yerr=_yerr(pd.DataFrame([r])), color=color, marker=marker,
                        markersize=np.sqrt(sizes[r["model"]]), capsize=3, linestyle="", zorder=3)
        if len(P) >= 2:
            fx, fy = _front(P[col].to_numpy() / scale, P["mean"].to_numpy())
            ax.step(fx, fy, where="post", color="k", linestyle="--", linewidth=1)
        ax.set_xlabel(label)
    axes[1].set_xscale("log")
    handles = [Line2D([], [], color=styles[v][0], marker=styles[v][1], linestyle="", label=v)
               for v in dict.fromkeys(D["variant"])]
    handles += [Line2D([], [], color="gray", marker="o", markerfacecolor="none", markersize=np.sqrt(sizes[m]),
                       linestyle="", label=m) for m in models] if len(models) > 1 else []
    handles.append(Line2D([], [], color="k", linestyle="--", linewidth=1, label="Pareto front"))
    axes[0].legend(handles=handles, fontsize=8)
    return _save(fig, axes, out / f"pareto-{task}.png", f"{task}: score vs cost (n={size}; colour and marker = method, "
                 "marker size = model; upper left is better)", "", UNITS.get(D["metric"].iloc[0], D["metric"].iloc[0]),
                 D)


def make_plots(S, out: Path) -> list[Path]:
    paths = []
    for task, T in S[S["primary"]].groupby("task", sort=False):
        for plot in (plot_size, plot_data, plot_shift, plot_pareto):
            path = plot(T, task, out)
            if path is not None:
                paths.append(path)
    return paths


def plot_curves(P: pd.DataFrame, out: Path) -> list[Path]:
    """Learning curves (bench/report/curves.py: curve_points): score vs training step and vs training seconds, one
    line per method variant (mean over seeds), its 95% interval as a band; one figure per task, model, train size."""
    paths = []
    for (task, model, size), D in (P.groupby(["task", "model", "train_size"], sort=False) if len(P) else []):
        styles = _styles(D)
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for variant, g in D.groupby("variant", sort=False):
            color, marker = styles[variant]
            for ax, x in zip(axes, ("step", "train_s")):
                ax.plot(g[x], g["mean"], marker=marker, color=color, label=variant)
                ax.fill_between(g[x], g["ci_low"], g["ci_high"], color=color, alpha=0.15, linewidth=0)
        axes[0].set_xlabel("training step")
        axes[1].set_xlabel("training seconds (evaluations excluded; mean over seeds)")
        paths.append(_save(fig, axes, out / f"curve-{task}.png" if P[["model", "train_size"]].drop_duplicates().shape[0]
                           == 1 else out / f"curve-{task}-{model}-n{size}.png",
                           f"{task}: learning curves ({model}, n={size}; band: 95% interval)", "",
                           "accuracy on the curve's eval set (%)"))
    return paths


VERDICT_COLORS = {"reproduced": "#1a9850", "contradicted": "#d73027", "inconclusive": "#4575b4",
                  "not decided": "#f28e2b", "not run": "#9e9e9e"}


def plot_forest(claims: list[dict], out: Path, name: str = "forest-claims.png") -> Path | None:
    """Every decided or undecided claim's deciding comparison as the distance of its estimate from the claim's
    threshold, in the metric's units, with its 95% interval, signed so that right of 0 is the paper's side
    (superiority: Δ − m; non-inferiority: Δ + m; equivalence: m − |Δ|), coloured by verdict; a claim without an
    interval is a cross at 0, its reason beside it. Claims not run are counted in the title, not drawn. One row per
    claim, symmetric-log x (units differ: BLEU and accuracy points, steps, nats). None when no claim has a
    comparison (nothing ran that a claim reads)."""
    from matplotlib.transforms import blended_transform_factory

    from bench.report.verdicts import deciding

    if not any(r["found"] for r in claims):
        return None
    rows = []
    for r in claims:
        if r["verdict"] == "not run":
            continue
        f = deciding(r["found"]) if r["found"] else None
        iv = f.interval if f is not None else None
        label = f"{r['id']} ({f.comparison.unit})" if f is not None else r["id"]
        why = r.get("why") or ""
        if iv is None:
            rows.append((label, None, r["verdict"], why))
            continue
        c, hypothesis = f.comparison, r["check"]["hypothesis"]
        if hypothesis == "equivalence":
            x = (c.margin - abs(iv.estimate), c.margin - max(abs(iv.low), abs(iv.high)),
                 c.margin - (0 if iv.low < 0 < iv.high else min(abs(iv.low), abs(iv.high))))
        else:
            threshold = c.margin if hypothesis == "superiority" else -c.margin
            ends = sorted((c.side * iv.low - threshold, c.side * iv.high - threshold))
            x = (c.side * iv.estimate - threshold, *ends)
        rows.append((label, x, r["verdict"], why if r["verdict"] in ("not decided", "inconclusive") else ""))
    height = 0.3 * len(rows) + 1.9
    fig, ax = plt.subplots(figsize=(12, height))
    side_text = blended_transform_factory(ax.transAxes, ax.transData)
    for y, (label, x, verdict, reason) in enumerate(rows):
        color = VERDICT_COLORS.get(verdict, "#9e9e9e")
        if x is None:
            ax.plot([0], [y], marker="x", color=color, linestyle="")
        else:
            ax.errorbar([x[0]], [y], xerr=[[x[0] - x[1]], [x[2] - x[0]]], marker="o", color=color, capsize=3)
        if reason:
            ax.text(1.02, y, reason if len(reason) <= 70 else reason[:69] + "…", transform=side_text, fontsize=7,
                    va="center", color=color)
    reach = max([abs(v) for _, x, _, _ in rows if x is not None for v in x] + [2.0]) * 1.3
    ax.set_xlim(-reach, reach)
    ax.axvline(0, color="k", linewidth=1)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_yticks(range(len(rows)), [label for label, *_ in rows], fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel("estimate beyond the claim's threshold, in the claim's units (right of 0: the paper's side; "
                  "bars: 95% interval)", fontsize=8)
    handles = [Line2D([], [], color=c, marker="o", linestyle="", label=v) for v, c in VERDICT_COLORS.items()
               if any(verdict == v for _, _, verdict, _ in rows)]
    fig.legend(handles=handles, fontsize=8, loc="lower center", bbox_to_anchor=(0.43, 0.0), ncol=len(handles),
               frameon=False)
    ax.grid(True, axis="x", alpha=0.3)
    counts = pd.Series([r["verdict"] for r in claims]).value_counts()
    ax.set_title("Claims: " + ", ".join(f"{n} {v}" for v, n in counts.items()), fontsize=10)
    fig.subplots_adjust(left=0.27, right=0.6, bottom=1.05 / height, top=1 - 0.45 / height)
    path = out / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
