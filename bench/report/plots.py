"""Figures from the summary table (bench/report/write.py), PNG via matplotlib's Agg backend.

One figure per task and kind, written only when the summary has the data for it: score vs model size and
score vs training examples (line plots, log x, at least 2 x values; one panel per model), in-domain vs shifted eval
sets (grouped bars, one panel per model), score vs cost (peak memory, trainable parameters) with the Pareto front
(one row of panels per model and train size), and one figure per claim (its comparisons' Δ, intervals and margin).
Each figure carries one message: at most MAX_SERIES series per axes (more go to panels of their own), legends
outside the axes, variants in words (`variant_label`), titles that name the train size, seeds and eval examples.
Every point or bar has its 95% interval as error bars (none where the summary has none); every method variant
has its own colour and marker (bars: colour and hatch) in every figure. Files are named `<kind>-<task>.png`
(`claim-<id>.png`; the Snakefile's report() patterns rely on it).
"""

from __future__ import annotations

import textwrap
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

UNITS = {
    "accuracy": "accuracy (%)",
    "f1": "F1 (×100)",
    "bleu": "BLEU (0–100)",
    "rouge_l": "ROUGE-L F (×100)",
    "rouge_1": "ROUGE-1 F (×100)",
}


COLORS = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 7]  # tab10 less its grey (the model legend's)
MARKERS = "osD^vP*Xph<>"
HATCHES = ["", "//", "..", "xx", "\\\\", "oo", "++", "--", "**", "||", "OO", "//.."]  # bars: the marker's counterpart
MAX_SERIES = 6  # series per axes: more are split into panels of their own (one message per axes)
METHOD_NAMES = {
    "full_ft": "full fine-tuning",
    "ft_top_k": "fine-tuning, top layers",
    "lora": "LoRA",
    "ia3": "IA³",
    "adapter": "adapter",
    "bitfit": "BitFit",
    "prefix_tuning": "prefix tuning",
    "p_tuning": "P-tuning",
    "prompt_tuning": "prompt tuning",
    "prompt_ensemble": "prompt ensemble",
    "prompt_design": "prompt design (no training)",
    "pet": "PET",
    "pet_final": "PET, final model",
    "distill": "distillation",
}
INITS = {
    "class_label": "class-label init",
    "vocab": "sampled-vocabulary init",
    "random": "random init",
    "text": "text init",
}
PROMPTS = ("prompt_tuning", "p_tuning", "prompt_ensemble")
LEGEND = dict(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)


def variant_label(row) -> str:
    """A variant in words: `prompt tuning, 20 tokens, class-label init`, never `prompt_tuning-init-init=random`.
    The method's name, then the hyperparameters the row states (the summary's hp columns) or the variant names
    (`key=value` parts), then the part of a grid of parts it comes from."""
    variant = str(row["variant"])
    name, _, part = variant.partition(" [")
    method = str(row.get("method") or name.split("-")[0])
    words = [METHOD_NAMES.get(method, method.replace("_", " "))]
    stated = dict(piece.split("=", 1) for piece in name.split("-")[1:] if "=" in piece)

    def value(key):
        v = row.get(key) if key in row else None
        if v is None or (isinstance(v, float) and np.isnan(v)) or v == "":
            v = stated.get(key)
        return v

    if method in PROMPTS:
        tokens = value("num_virtual_tokens")
        if tokens is not None:
            words.append(f"{int(float(tokens))} tokens")
        init = value("init")
        if init is not None:
            words.append(INITS.get(str(init), f"{init} init"))
    template = value("template")
    if template not in (None, "", "default"):
        words.append(f"template {template}")
    for key, v in stated.items():
        if key not in ("num_virtual_tokens", "init", "template"):
            words.append(f"{key.replace('_', ' ')} {v}")
    return ", ".join(words) + (f" ({part.rstrip(']')} part)" if part else "")


def _labels(T) -> dict:
    """Variant -> its label, wrapped to fit the legend's column beside the axes."""
    return {
        v: textwrap.fill(variant_label(r), 44, subsequent_indent="  ")
        for v, r in T.drop_duplicates("variant").set_index("variant", drop=False).to_dict("index").items()
    }


def _styles(order) -> dict:
    """Per method variant a (colour, marker) pair. `order`: a frame (its variants in order), or the variants panel
    by panel (a list of lists): a variant new to a panel takes the next colour no variant of that panel has yet,
    so the at most MAX_SERIES series of one axes never share a colour (9 colours, 12 markers)."""
    panels = [list(dict.fromkeys(order["variant"]))] if isinstance(order, pd.DataFrame) else order
    styles, following = {}, 0
    for group in panels:
        used = {styles[v][0] for v in group if v in styles}
        for v in group:
            if v in styles:
                continue
            i = following
            while COLORS[i % len(COLORS)] in used and i < following + len(COLORS):
                i += 1
            styles[v] = (COLORS[i % len(COLORS)], MARKERS[i % len(MARKERS)])
            used.add(styles[v][0])
            following = i + 1
    return styles


def _yerr(D):
    """Error bars from the 95% interval (bench/report/stats.py); none where a row has no interval."""
    if "ci_low" not in D:
        return None
    return np.array([D["mean"] - D["ci_low"], D["ci_high"] - D["mean"]], dtype=float)


def _span(values, one: str, many: str) -> str:
    found = sorted({int(v) for v in values if pd.notna(v)})
    if not found:
        return ""
    text = f"{found[0]}" if len(found) == 1 else f"{found[0]}–{found[-1]}"
    return f"{text} {one if found == [1] else many}"


def sampling(D, sizes: bool = True) -> str:
    """What the figure's points stand on: train size, seeds and eval examples, each named (never a bare "n")."""
    parts = []
    if sizes and "train_size" in D:
        found = sorted(set(D["train_size"].astype(str)), key=_num)
        parts.append("train size " + (found[0] if len(found) == 1 else f"{found[0]}–{found[-1]}"))
    if "seeds" in D:
        parts.append(_span(D["seeds"], "seed", "seeds"))
    if "examples" in D:
        parts.append(_span(D["examples"], "eval example", "eval examples"))
    return ", ".join(p for p in parts if p)


def _chunks(variants: list) -> list[list]:
    """Variants split into panels of at most MAX_SERIES, as evenly as they go."""
    k = max(1, -(-len(variants) // MAX_SERIES))
    size = -(-len(variants) // k) if variants else 1
    return [variants[i : i + size] for i in range(0, len(variants), size)] or [[]]


def _panels(count: int, width: float = 6.4, height: float = 3.2, columns: int = 1):
    """`count` rows of `columns` axes, a right margin kept for the legends outside them."""
    fig, axes = plt.subplots(count, columns, figsize=(width + 3.6, 0.9 + height * count), squeeze=False)
    return fig, axes


def _save(fig, axes, path: Path, title: str, ylabel: str, D=None) -> Path:
    """`D`: the rows drawn; a figure none of whose rows has an interval says why it has no error bars. Legends stay
    outside the axes (each axes' own, at its right)."""
    if D is not None and ("ci_low" not in D or D["ci_low"].isna().all()):
        fig.text(0.99, 0.005, "no error bars: one seed and no per-example outputs", ha="right", fontsize=7)
    for a in np.ravel(axes):
        a.grid(True, alpha=0.3)
        a.set_axisbelow(True)
        if ylabel and a.get_subplotspec().is_first_col():
            a.set_ylabel(ylabel)
    height = fig.get_figheight()
    fig.suptitle(title, fontsize=10, y=1 - 0.12 / height, va="top")
    rows = np.atleast_2d(axes).shape[0]
    fig.subplots_adjust(
        left=0.09,
        right=1 - 3.7 / fig.get_figwidth(),
        bottom=0.75 / height,
        top=1 - 0.75 / height,
        hspace=0.55 if rows > 1 else 0.2,
        wspace=0.12,
    )  # fixed: tight_layout is slow
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _lines(ax, D, x, styles, labels, tick=human):
    """One line per method variant (error bars: 95% intervals); log x with ticks at the data."""
    for variant, g in D.groupby("variant", sort=False):
        g = g.sort_values(x)
        color, marker = styles[variant]
        ax.errorbar(g[x], g["mean"], yerr=_yerr(g), marker=marker, capsize=3, label=labels[variant], color=color)
    ax.set_xscale("log")
    xs = sorted(set(D[x]))
    ax.set_xticks(xs, [tick(v) for v in xs], rotation=30 if len(xs) > 3 else 0, fontsize=8)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.legend(**LEGEND)


def _unit(D) -> str:
    return UNITS.get(D["metric"].iloc[0], D["metric"].iloc[0])


def plot_size(T, task, out: Path):
    size = max(T["train_size"], key=_num)
    D = T[T["in_domain"] & (T["train_size"] == size)]
    D = D[D.groupby("variant")["model_params"].transform("nunique") >= 2]  # a line needs two sizes
    if D.empty:
        return None
    groups, labels = _chunks(list(dict.fromkeys(D["variant"]))), _labels(T)
    styles = _styles(groups)
    fig, axes = _panels(len(groups))
    for ax, group in zip(axes[:, 0], groups):
        _lines(ax, D[D["variant"].isin(group)], "model_params", styles, labels)
    axes[-1, 0].set_xlabel("model size (parameters, log scale)")
    return _save(fig, axes, out / f"size-{task}.png", f"{task}: score vs model size ({sampling(D)})", _unit(D), D)


def plot_data(T, task, out: Path):
    D = T[T["in_domain"] & T["train_size"].str.isdigit()]
    D = D[D.groupby(["model", "variant"])["train_size"].transform("nunique") >= 2]  # a line needs two sizes
    models = [
        m
        for m in dict.fromkeys(D.sort_values("model_params")["model"])
        if D.loc[D["model"] == m, "train_size"].nunique() >= 2
    ]
    if not models:
        return None
    labels = _labels(T)
    panels = [(m, g) for m in models for g in _chunks(list(dict.fromkeys(D.loc[D["model"] == m, "variant"])))]
    styles = _styles([g for _, g in panels])
    fig, axes = _panels(len(panels))
    for ax, (model, group) in zip(axes[:, 0], panels):
        M = D[(D["model"] == model) & D["variant"].isin(group)]
        _lines(ax, M.assign(train_n=M["train_size"].astype(int)), "train_n", styles, labels, tick=lambda v: f"{v:g}")
        ax.set_title(model, fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("training examples (log scale)")
    D = D[D["model"].isin(models)]
    return _save(
        fig, axes, out / f"trainsize-{task}.png", f"{task}: score vs training examples ({sampling(D)})", _unit(D), D
    )


def plot_shift(T, task, out: Path):
    """In-domain vs shifted eval sets, one panel per model (and per group of at most MAX_SERIES variants), each at
    the largest train size that model has shifted sets for."""
    panels = []
    for model in dict.fromkeys(T.sort_values("model_params")["model"]):
        M = T[T["model"] == model]
        shifted = M[~M["in_domain"]]
        if shifted.empty:
            continue
        size = max(shifted["train_size"], key=_num)
        M = M[(M["train_size"] == size) & M["variant"].isin(shifted.loc[shifted["train_size"] == size, "variant"])]
        panels += [(model, size, M[M["variant"].isin(g)]) for g in _chunks(list(dict.fromkeys(M["variant"])))]
    if not panels:
        return None
    styles, labels = _styles([list(dict.fromkeys(D["variant"])) for *_, D in panels]), _labels(T)
    sets_all = max((list(dict.fromkeys(D["eval_set"])) for *_, D in panels), key=len)
    fig, axes = _panels(len(panels), width=max(6.4, 1.3 * len(sets_all)))
    for ax, (model, size, D) in zip(axes[:, 0], panels):
        sets, variants = list(dict.fromkeys(D["eval_set"])), list(dict.fromkeys(D["variant"]))
        width = 0.8 / len(variants)
        for i, variant in enumerate(variants):
            by = D[D["variant"] == variant].set_index("eval_set")
            xs = [j for j, s in enumerate(sets) if s in by.index]
            color, marker = styles[variant]
            ax.bar(
                [x + (i - (len(variants) - 1) / 2) * width for x in xs],
                [by.loc[sets[x], "mean"] for x in xs],
                width,
                yerr=_yerr(by.loc[[sets[x] for x in xs]]),
                capsize=3,
                label=labels[variant],
                color=color,
                hatch=HATCHES[MARKERS.index(marker) % len(HATCHES)],
                edgecolor="white",
            )
        ax.set_xticks(
            range(len(sets)),
            [s + (" (in-domain)" if s == task else "") for s in sets],
            fontsize=8,
            rotation=20 if len(sets) > 4 else 0,
        )
        ax.set_title(f"{model}, train size {size}", fontsize=9, loc="left")
        ax.legend(**LEGEND)
    D = pd.concat([D for *_, D in panels])
    return _save(
        fig,
        axes,
        out / f"shift-{task}.png",
        f"{task}: in-domain vs shifted eval sets, per model ({sampling(D, sizes=False)})",
        _unit(D),
        D,
    )


def _front(x, y):
    """Points no other point beats on both axes (less cost, more score), in cost order."""
    order, best, keep = np.lexsort((-y, x)), -np.inf, []  # by cost, then best score first among equal costs
    for i in order:
        if y[i] > best:
            keep.append(i)
            best = y[i]
    return x[keep], y[keep]


def plot_pareto(T, task, out: Path):
    """Score vs cost (peak memory, trainable parameters), one row of panels per model and train size (every one
    the summary has), and per group of at most MAX_SERIES − 1 variants (the front is the sixth series); the
    Pareto front over all of that row's variants."""
    D = T[T["in_domain"]]
    settings = [
        (m, n)
        for m in dict.fromkeys(D.sort_values("model_params")["model"])
        for n in sorted(set(D.loc[D["model"] == m, "train_size"]), key=_num)
    ]
    rows = []
    for model, size in settings:
        S = D[(D["model"] == model) & (D["train_size"] == size)]
        if len(S) < 2:
            continue
        variants = list(dict.fromkeys(S["variant"]))
        k = max(1, -(-len(variants) // (MAX_SERIES - 1)))
        step = -(-len(variants) // k)
        rows += [(model, size, S, variants[i : i + step]) for i in range(0, len(variants), step)]
    if not rows:
        return None
    styles, labels = _styles([group for *_, group in rows]), _labels(T)
    fig, axes = _panels(len(rows), width=9.0, height=3.0, columns=2)
    for (model, size, S, group), pair in zip(rows, axes):
        for ax, col, scale, label in (
            (pair[0], "peak_mem_bytes", 2**30, "peak memory (GB)"),
            (pair[1], "trainable_params", 1, "trainable parameters (log scale)"),
        ):
            P = S[S[col] > 0]
            for variant in group:
                V = P[P["variant"] == variant]
                if len(V):
                    color, marker = styles[variant]
                    ax.errorbar(
                        V[col] / scale,
                        V["mean"],
                        yerr=_yerr(V),
                        color=color,
                        marker=marker,
                        capsize=3,
                        linestyle="",
                        zorder=3,
                        label=labels[variant],
                    )
            if len(P) >= 2:
                fx, fy = _front(P[col].to_numpy() / scale, P["mean"].to_numpy())
                ax.step(fx, fy, where="post", color="k", linestyle="--", linewidth=1, label="Pareto front (all)")
            ax.set_xlabel(label, fontsize=8)
        pair[1].set_xscale("log")
        pair[1].sharey(pair[0])
        pair[0].set_title(f"{model}, train size {size}", fontsize=9, loc="left")
        handles, names = pair[1].get_legend_handles_labels()
        if not handles:
            handles, names = pair[0].get_legend_handles_labels()
        pair[1].legend(handles, names, **LEGEND)
    used = pd.concat([S for _, _, S, _ in rows])
    return _save(
        fig,
        axes,
        out / f"pareto-{task}.png",
        f"{task}: score vs cost, per model and train size ({sampling(used, sizes=False)}; upper left is better)",
        _unit(used),
        used,
    )


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
    for (task, model, size), D in P.groupby(["task", "model", "train_size"], sort=False) if len(P) else []:
        styles = _styles(D)
        labels = {
            v: textwrap.fill(variant_label({"variant": v}), 44, subsequent_indent="  ")
            for v in dict.fromkeys(D["variant"])
        }
        groups = _chunks(list(dict.fromkeys(D["variant"])))
        fig, axes = _panels(len(groups), width=9.0, height=3.4, columns=2)
        for pair, group in zip(axes, groups):
            for variant, g in D[D["variant"].isin(group)].groupby("variant", sort=False):
                color, marker = styles[variant]
                for ax, x in zip(pair, ("step", "train_s")):
                    ax.plot(g[x], g["mean"], marker=marker, color=color, label=labels[variant])
                    ax.fill_between(g[x], g["ci_low"], g["ci_high"], color=color, alpha=0.15, linewidth=0)
            pair[1].sharey(pair[0])
            pair[1].legend(**LEGEND)
        axes[-1, 0].set_xlabel("training step")
        axes[-1, 1].set_xlabel("training seconds (evaluations excluded; mean over seeds)")
        seeds = _span(D["seeds"], "seed", "seeds") if "seeds" in D else ""
        paths.append(
            _save(
                fig,
                axes,
                out / f"curve-{task}.png"
                if P[["model", "train_size"]].drop_duplicates().shape[0] == 1
                else out / f"curve-{task}-{model}-n{size}.png",
                f"{task}: learning curves ({model}, train size {size}"
                + (f", {seeds}" if seeds else "")
                + "; band: 95% interval)",
                "accuracy on the curve's eval set (%)",
            )
        )
    return paths


def plot_claims(claims: list[dict], out: Path) -> list[Path]:
    """One figure per claim with comparisons: each comparison's Δ (the compared cells, named on its row) with its 95%
    interval, the claim's threshold (the margin, on the paper's side) and 0; titled with the verdict, the test, and
    the seeds and eval examples behind it. `claim-<id>.png`."""
    paths = []
    for r in claims:
        drawn = [f for f in r["found"] if f.interval is not None]
        if not drawn:
            continue
        hypothesis = r["check"]["hypothesis"]
        height = 1.6 + 0.32 * len(drawn)
        fig, ax = plt.subplots(figsize=(10, height))
        ys = np.arange(len(drawn))
        est = np.array([f.interval.estimate for f in drawn])
        low, high = np.array([f.interval.low for f in drawn]), np.array([f.interval.high for f in drawn])
        color = VERDICT_COLORS.get(r["verdict"], "#9e9e9e")
        ax.errorbar(
            est,
            ys,
            xerr=[est - low, high - est],
            marker="o",
            linestyle="",
            capsize=3,
            color=color,
            label=f"Δ [95% interval]: {r['verdict']}",
        )
        c = drawn[0].comparison
        if hypothesis == "equivalence":
            ax.axvspan(-c.margin, c.margin, color="#777777", alpha=0.15, label=f"equivalence: |Δ| < {c.margin:g}")
        else:
            threshold = c.side * (c.margin if hypothesis == "superiority" else -c.margin)
            ax.axvline(
                threshold,
                color="#777777",
                linestyle="--",
                linewidth=1.2,
                label=f"threshold {threshold:+g} ({hypothesis.replace('_', '-')}; paper's side: "
                f"{'right' if c.side > 0 else 'left'})",
            )
        ax.axvline(0, color="k", linewidth=0.8, label="no difference")
        ax.set_yticks(
            ys,
            [(f.comparison.label if len(f.comparison.label) <= 60 else f.comparison.label[:59] + "…") for f in drawn],
            fontsize=7,
        )
        ax.set_ylim(len(drawn) - 0.5, -0.5)
        ax.set_xlabel(f"Δ = left − right, {c.unit} (left and right: the compared cells named on each row)", fontsize=8)
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(**LEGEND)
        seeds = sorted({f.seeds for f in drawn if f.seeds})
        examples = sorted({f.examples for f in drawn if f.examples})
        size = ", ".join(
            x for x in (_span(seeds, "seed", "seeds"), _span(examples, "eval example", "eval examples")) if x
        )
        fig.suptitle(f"{r['id']}: {r['verdict']} ({r['test']}" + (f"; {size}" if size else "") + ")", fontsize=9)
        fig.subplots_adjust(left=0.3, right=0.68, bottom=0.8 / height, top=1 - 0.55 / height)
        path = out / f"claim-{r['id']}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


VERDICT_COLORS = {
    "reproduced": "#1a9850",
    "contradicted": "#d73027",
    "inconclusive": "#4575b4",
    "not decided": "#f28e2b",
    "not run": "#9e9e9e",
}


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
            x = (
                c.margin - abs(iv.estimate),
                c.margin - max(abs(iv.low), abs(iv.high)),
                c.margin - (0 if iv.low < 0 < iv.high else min(abs(iv.low), abs(iv.high))),
            )
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
            ax.text(
                1.02,
                y,
                reason if len(reason) <= 70 else reason[:69] + "…",
                transform=side_text,
                fontsize=7,
                va="center",
                color=color,
            )
    reach = max([abs(v) for _, x, _, _ in rows if x is not None for v in x] + [2.0]) * 1.3
    ax.set_xlim(-reach, reach)
    ax.axvline(0, color="k", linewidth=1)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_yticks(range(len(rows)), [label for label, *_ in rows], fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel(
        "estimate beyond the claim's threshold, in the claim's units (right of 0: the paper's side; "
        "bars: 95% interval)",
        fontsize=8,
    )
    handles = [
        Line2D([], [], color=c, marker="o", linestyle="", label=v)
        for v, c in VERDICT_COLORS.items()
        if any(verdict == v for _, _, verdict, _ in rows)
    ]
    fig.legend(
        handles=handles, fontsize=8, loc="lower center", bbox_to_anchor=(0.43, 0.0), ncol=len(handles), frameon=False
    )
    ax.grid(True, axis="x", alpha=0.3)
    counts = pd.Series([r["verdict"] for r in claims]).value_counts()
    ax.set_title("Claims: " + ", ".join(f"{n} {v}" for v, n in counts.items()), fontsize=10)
    fig.subplots_adjust(left=0.27, right=0.6, bottom=1.05 / height, top=1 - 0.45 / height)
    path = out / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
